#!/usr/bin/env bash
# tests/e2e/test_local_guest.sh — boots the e2e guest on plain QEMU (local
# RAM, no giantvm): 512 MiB guest, workload over 256 MiB, and checks the
# GIANTVM-RESULT line (verify=ok, checksum == `workload --expect 256 SEED`
# computed on the host).  Also checks that the FAIL path is reported.
#
# Env: GVM_TEST_SEED (default 1), GVM_TEST_TIMEOUT (seconds, default 300),
#      GIANTVM_CACHE (see guest.sh).  A missing prerequisite (the guest
#      cannot be prepared): SKIP, exit 77; with CI=true it fails.
# Closing line: "N passed, M failed"; exit 0 iff nothing failed.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh"

SEED=${GVM_TEST_SEED:-1}
TIMEOUT=${GVM_TEST_TIMEOUT:-300}
MEM=512 MIB=256

# shellcheck source=harness.sh
. "$HERE/harness.sh"

gvm_guest_prepare || missing "gvm_guest_prepare failed"

TMP=$(mktemp -d /tmp/gvm-e2e-localguest.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup
log=$TMP/serial.log

expect=$("$GVM_WORKLOAD" --expect "$MIB" "$SEED")
echo "# kernel: $GVM_KERNEL_PKG ($GVM_KERNEL)"
echo "# expected checksum for mib=$MIB seed=$SEED: $expect"

# --- the real run
gvm_guest_boot "$log" "$TIMEOUT" "$MEM" "$MIB" "gvm.seed=$SEED"
rc=$?
echo "# qemu rc=$rc wall=${GVM_BOOT_S}s: ${GVM_RESULT:-<no GIANTVM-RESULT line>}"
boot_up=$(tr -d '\r' <"$log" | sed -n 's/.*GIANTVM-BOOT uptime=\([0-9.]*\).*/\1/p' | head -n1)
[[ -n $boot_up ]] && echo "# guest uptime when /init started: ${boot_up}s"
if ((rc == 0)); then ok "qemu exited 0 in ${GVM_BOOT_S}s"; else
    bad "qemu exit status $rc (124 = timeout ${TIMEOUT}s); serial log tail:"
    show_tail "$log" 30
fi
n_lines=$(tr -d '\r' <"$log" | grep -c '^GIANTVM-RESULT ')
if [[ $n_lines == 1 ]]; then ok "exactly one GIANTVM-RESULT line"; else bad "$n_lines GIANTVM-RESULT lines"; fi
re='^GIANTVM-RESULT mib=([0-9]+) seed=([0-9]+) checksum=([0-9a-f]{16}) verify=([A-Za-z]+) .*elapsed_ms=([0-9]+)$'
if [[ $GVM_RESULT =~ $re ]]; then
    ok "result line well-formed"
    [[ ${BASH_REMATCH[1]} == "$MIB" ]] && ok "mib=$MIB" || bad "mib=${BASH_REMATCH[1]}, want $MIB"
    [[ ${BASH_REMATCH[2]} == "$SEED" ]] && ok "seed=$SEED" || bad "seed=${BASH_REMATCH[2]}, want $SEED"
    [[ ${BASH_REMATCH[4]} == ok ]] && ok "verify=ok" || bad "verify=${BASH_REMATCH[4]}"
    [[ ${BASH_REMATCH[3]} == "$expect" ]] && ok "checksum matches host-side expectation" ||
        bad "checksum ${BASH_REMATCH[3]} != expected $expect"
    echo "# workload elapsed in guest: ${BASH_REMATCH[5]} ms"
else
    bad "result line malformed or missing: '${GVM_RESULT}'"
fi

# --- the FAIL path must be reported (small run with an injected fault)
gvm_guest_boot "$log" "$TIMEOUT" 256 16 "gvm.seed=$SEED" gvm.fault=12345
rc=$?
if [[ $GVM_RESULT == *" verify=FAIL bad_offset=12345 "* ]] &&
    tr -d '\r' <"$log" | grep -q '^GIANTVM-EXIT rc=1$'; then
    ok "injected fault reported as verify=FAIL bad_offset=12345 (qemu rc=$rc, ${GVM_BOOT_S}s)"
else
    bad "injected fault not reported: rc=$rc '${GVM_RESULT}'"
fi
finish
