#!/usr/bin/env bash
# tests/e2e/test_rand_workload.sh: the random-access guest workloads that
# bench/random_vs_swap.sh runs, on plain QEMU (local RAM, no giantvm).
#   host:  workload --rand uniform|zipf ends verify=ok with the checksum
#          --expect-rand computes; a wrong --expect fails (reason=checksum)
#          and so does a dropped write (--lose-write, reason=count_sum)
#   guest: gvm.rand=uniform and gvm.rand=zipf (64 MiB, 50000 ops) print
#          verify=ok with the host's checksum; a wrong gvm.expect is
#          reported as verify=FAIL and GIANTVM-EXIT rc=1
#   redis: the redis initramfs (gvm_guest_prepare_redis: Debian's
#          redis-server in the guest) with gvm.job=redis, 2000 keys: every
#          answer checked, dbsize right, verify=ok
# Env: GVM_TEST_TIMEOUT (seconds per boot, default 300), GIANTVM_CACHE,
#      CI=true: a missing prerequisite fails.
# Closing line: "N passed, M failed"; exit 0 iff nothing failed.
# shellcheck disable=SC2015  # A && ok || bad: ok always returns 0
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh"
# shellcheck source=harness.sh
. "$HERE/harness.sh"
TIMEOUT=${GVM_TEST_TIMEOUT:-300}
MIB=64 OPS=50000 SEED=7

gvm_guest_prepare 2>/dev/null || missing "gvm_guest_prepare failed (root and Debian packages needed)"
W=$GVM_WORKLOAD
log=$(mktemp /tmp/gvm-rand.XXXXXX.log)
trap 'rm -f "$log"' EXIT

# ---------------------------------------------------------------- host
for d in uniform zipf; do
    e=$("$W" --expect-rand "$d" 16 20000 3)
    r=$("$W" --rand "$d" --mib 16 --ops 20000 --seed 3 --expect "$e")
    [[ $? == 0 && $r == *" checksum=$e verify=ok "* ]] && ok "host $d: verify=ok, checksum $e" || bad "host $d: '$r' (want checksum=$e)"
    r=$("$W" --rand "$d" --mib 16 --ops 20000 --seed 3 --expect 1)
    [[ $? == 1 && $r == *" verify=FAIL reason=checksum "* ]] && ok "host $d: wrong --expect -> FAIL" || bad "host $d wrong --expect: '$r'"
    r=$("$W" --rand "$d" --mib 16 --ops 20000 --seed 3 --lose-write 777)
    [[ $? == 1 && $r == *" verify=FAIL reason=count_sum "* ]] && ok "host $d: a lost write -> FAIL" || bad "host $d --lose-write: '$r'"
done

# ---------------------------------------------------------------- guest
for d in uniform zipf; do
    e=$("$W" --expect-rand "$d" "$MIB" "$OPS" "$SEED")
    gvm_guest_boot "$log" "$TIMEOUT" 192 "$MIB" "gvm.rand=$d" "gvm.ops=$OPS" "gvm.seed=$SEED" "gvm.expect=$e"
    rc=$?
    if ((rc == 0)) && [[ $GVM_RESULT == "GIANTVM-RESULT mode=rand dist=$d mib=$MIB ops=$OPS seed=$SEED checksum=$e verify=ok "* ]]; then
        r=${GVM_RESULT##* ops_per_s=}
        ok "guest $d: verify=ok with the host's checksum ($GVM_BOOT_S s; ${r%% *} ops/s)"
    else
        bad "guest $d: rc=$rc '${GVM_RESULT}' (want checksum=$e verify=ok)"
        tr -d '\r' <"$log" | tail -n 20 | sed 's/^/#   /'
    fi
done
gvm_guest_boot "$log" "$TIMEOUT" 192 16 gvm.rand=uniform gvm.ops=1000 "gvm.seed=$SEED" gvm.expect=0123456789abcdef
rc=$?
if [[ $GVM_RESULT == *" verify=FAIL reason=checksum "* ]] && tr -d '\r' <"$log" | grep -q '^GIANTVM-EXIT rc=1$'; then
    ok "guest: a wrong gvm.expect is reported as verify=FAIL, exit rc=1 (qemu rc=$rc)"
else
    bad "guest: wrong gvm.expect not reported: rc=$rc '${GVM_RESULT}'"
fi

# ---------------------------------------------------------------- redis
if ! gvm_guest_prepare_redis 2>"$log"; then
    cat "$log"
    missing "gvm_guest_prepare_redis failed (redis-tools)"
fi
GVM_INITRD=$GVM_INITRD_REDIS
gvm_guest_boot "$log" "$TIMEOUT" 256 0 gvm.job=redis gvm.keys=2000 gvm.value=1000 gvm.ops=2000 "gvm.seed=$SEED"
rc=$?
if ((rc == 0)) && [[ $GVM_RESULT == "GIANTVM-RESULT mode=redis "*" dbsize=2000 checked="*" mismatches=0 verify=ok "* ]]; then
    r=${GVM_RESULT##* checked=}
    ok "guest redis: every answer checked ($GVM_BOOT_S s; ${r%% *} answers), verify=ok"
else
    bad "guest redis: rc=$rc '${GVM_RESULT}'"
    tr -d '\r' <"$log" | tail -n 20 | sed 's/^/#   /'
fi
finish
