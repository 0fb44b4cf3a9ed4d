#!/usr/bin/env bash
# tests/e2e/test_mode.sh — mode detection and the ORIGINAL-mode handover,
# with fake system roots ($GIANTVM_SYSROOT) and a fake original QEMU.  No
# guest is booted, nothing needs root.
#
#   giantvm mode [--json] with a sysroot holding sys/module/giantvm_kvm, or
#   dev/giantvm -> ORIGINAL; with an empty sysroot -> UFFD.
#   The accelerator on three kinds of faked host (no /dev/kvm -> TCG;
#   kvm_intel -> KVM; kvm_pvm -> TCG, naming kvm_pvm; no vendor module ->
#   TCG) and on a sysroot mirroring this host (expected value computed here).
#   giantvm run in ORIGINAL mode execs the original QEMU (a fake that records
#   its argv and pid, and exits 42): the user's QEMU args, minus the program
#   name, then `-local-cpu CPUS,start=CPUS*ID,iplist="H1:P1 H2:P2 H3:P3"`
#   (src/cli/run.c run_original; CPUS = -smp / nodes unless --giantvm-cpus).
#   $GIANTVM_QEMU works like --giantvm-qemu; a missing QEMU, a missing cluster
#   file or id, and an id out of range are clear errors.
#
# Env: GVM_BUILD_DIR (default <repo>/build).
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2317  # ok() always succeeds; trap handlers
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh" # (for consistency with the other e2e tests; no guest is booted)
BUILD=${GVM_BUILD_DIR:-$REPO/build}

# shellcheck source=harness.sh
. "$HERE/harness.sh"

if [[ ! -x $BUILD/giantvm ]]; then
    bad "build: $BUILD/giantvm missing (run 'make -j2' in $REPO first)"
    finish
fi

TMP=$(mktemp -d /tmp/gvm-e2e-mode.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup

snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

ORIG_BANNER="[GiantVM] Detected Custom Kernel Module. Entering ORIGINAL Mode."
UFFD_BANNER="[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode."

# Fake system roots.
SR_MOD=$TMP/root-module SR_DEV=$TMP/root-dev SR_NONE=$TMP/root-empty
mkdir -p "$SR_MOD/sys/module/giantvm_kvm" "$SR_DEV/dev" "$SR_NONE"
: >"$SR_DEV/dev/giantvm"

# A sysroot that mirrors this host's KVM: /dev/kvm (the real device) and the
# KVM modules loaded. What detection must conclude, computed independently:
# KVM only with kvm_intel/kvm_amd and without kvm_pvm, /dev/kvm opening.
SR_HOST=$TMP/root-host
mirror_host_kvm "$SR_HOST"
note "this host's KVM: $host_kvm"

# Three kinds of host, faked (a regular file stands for a /dev/kvm that answers):
#   no /dev/kvm -> TCG; kvm_intel -> KVM; kvm_pvm -> TCG naming kvm_pvm.
SR_NOKVM=$TMP/root-nokvm SR_HWKVM=$TMP/root-hwkvm SR_PVM=$TMP/root-pvm SR_NOVENDOR=$TMP/root-novendor
mkdir -p "$SR_NOKVM/dev" "$SR_HWKVM/dev" "$SR_HWKVM/sys/module/kvm" "$SR_HWKVM/sys/module/kvm_intel" \
    "$SR_PVM/dev" "$SR_PVM/sys/module/kvm" "$SR_PVM/sys/module/kvm_pvm" "$SR_NOVENDOR/dev"
: >"$SR_HWKVM/dev/kvm"
: >"$SR_PVM/dev/kvm"
: >"$SR_NOVENDOR/dev/kvm"
# mode_accel NAME SYSROOT WANT_ACCEL WANT_KVM REASON_REGEX
mode_accel() {
    local name=$1 sr=$2 want=$3 wkvm=$4 re=$5 out acc rc
    out=$(GIANTVM_SYSROOT=$sr "$G" mode 2>&1)
    rc=$?
    acc=$(grep -m1 '^ *accelerator:' <<<"$out")
    if ((rc == 0)) && [[ $(head -n1 <<<"$out") == "$UFFD_BANNER" && $acc =~ accelerator:\ +$want\ \( ]] &&
        grep -qiE "$re" <<<"$acc"; then
        ok "mode ($name): ${acc#*: }"
    else
        bad "mode ($name): rc=$rc, want $want matching /$re/: $out"
    fi
    out=$(GIANTVM_SYSROOT=$sr "$G" mode --json 2>&1)
    rc=$?
    want=${want,,}
    if ((rc == 0)) && [[ $out == *'"mode":"uffd"'* && $out == *"\"accel\":\"$want\""* &&
        $out == *"\"kvm\":\"$wkvm\""* ]]; then
        ok "mode --json ($name): accel \"$want\", kvm \"$wkvm\""
    else
        bad "mode --json ($name): rc=$rc, want accel $want kvm $wkvm: $out"
    fi
}
mode_accel "no /dev/kvm" "$SR_NOKVM" TCG none 'No such file'
mode_accel "kvm_intel" "$SR_HWKVM" KVM usable 'usable \(kvm_intel\)'
mode_accel "kvm_pvm" "$SR_PVM" TCG doubtful 'kvm_pvm'
mode_accel "no vendor module" "$SR_NOVENDOR" TCG doubtful 'neither kvm_intel nor kvm_amd'
case $host_kvm in
none) mode_accel "this host" "$SR_HOST" TCG none 'dev/kvm' ;;
doubtful) mode_accel "this host" "$SR_HOST" TCG doubtful 'kvm_pvm|neither|answer' ;;
usable) mode_accel "this host" "$SR_HOST" KVM usable 'usable' ;;
esac

out=$(GIANTVM_SYSROOT=$SR_NONE "$G" mode 2>&1)
rc=$?
first=$(head -n1 <<<"$out")
if ((rc == 0)) && [[ $first == "$UFFD_BANNER" ]]; then ok "mode (empty sysroot): UFFD banner"; else
    bad "mode (empty sysroot): rc=$rc, first line '$first'"
fi
grep -q '^ *userfaultfd:' <<<"$out" && ok "mode: userfaultfd line" || bad "mode: no userfaultfd line: $out"
out=$(GIANTVM_SYSROOT=$SR_HOST "$G" mode --json 2>&1)
if command -v jq >/dev/null; then
    jq -e . >/dev/null 2>&1 <<<"$out" && ok "mode --json is valid JSON" || bad "mode --json is not valid JSON: $out"
fi
"$G" mode --bogus >/dev/null 2>&1
rc=$?
((rc == 2)) && ok "mode --bogus: usage error (exit 2)" || bad "mode --bogus: exit $rc, want 2"

# ---------------------------------------------------------------- ORIGINAL handover
FAKE=$TMP/fake-giantvm-qemu
cat >"$FAKE" <<'EOF'
#!/bin/sh
# fake original GiantVM QEMU: record argv (one per line) and pid, exit 42
printf '%s\n' "$0" "$@" >"${FAKE_ARGV_OUT:?}"
echo "$$" >"${FAKE_ARGV_OUT}.pid"
exit 42
EOF
chmod 755 "$FAKE"
CONF=$TMP/cluster.conf
printf '%s\n' "# three nodes" "h1.example:7001" "h2.example:7002" "" "h3.example:7003" >"$CONF"
ARGV=$TMP/argv
want_iplist='iplist="h1.example:7001 h2.example:7002 h3.example:7003"'

# run_orig OUTFILE ARGS... : giantvm run in ORIGINAL mode (background + wait,
# to learn the pid giantvm ran as); sets RC and PID.
run_orig() {
    local outf=$1
    shift
    rm -f "$ARGV" "$ARGV.pid"
    FAKE_ARGV_OUT=$ARGV GIANTVM_SYSROOT=$SR_MOD timeout 20 "$@" </dev/null >"$outf" 2>&1 &
    PID=$!
    wait "$PID"
    RC=$?
}
# argv_is EXPECTED-ARGS...: the fake's recorded argv (after $0) equals them
argv_is() {
    local -a got
    mapfile -t got <"$ARGV"
    [[ ${got[0]} == "$FAKE" ]] || return 1
    got=("${got[@]:1}")
    [[ ${#got[@]} == "$#" ]] || return 1
    local i=0 a
    for a in "$@"; do
        [[ ${got[i]} == "$a" ]] || return 1
        i=$((i + 1))
    done
}

run_orig "$TMP/o1" "$G" run --giantvm-qemu "$FAKE" --giantvm-conf "$CONF" --giantvm-id 1 -- \
    qemu-system-x86_64 -smp 6 -m 1G
if [[ -s $ARGV ]]; then
    note "fake argv: $(tr '\n' ' ' <"$ARGV")"
    ok "handover: the fake original QEMU ran"
    ((RC == 42)) && ok "handover: exit status 42 propagated" || bad "handover: exit status $RC, want 42"
    head -n1 "$TMP/o1" | grep -qxF "$ORIG_BANNER" && ok "handover: ORIGINAL banner" ||
        bad "handover: first output line is '$(head -n1 "$TMP/o1")'"
    argv_is -smp 6 -m 1G -local-cpu "2,start=2,$want_iplist" &&
        ok "handover: argv = -smp 6 -m 1G -local-cpu 2,start=2,$want_iplist" ||
        bad "handover: argv is '$(tr '\n' ' ' <"$ARGV")', want '$FAKE -smp 6 -m 1G -local-cpu 2,start=2,$want_iplist'"
else
    bad "handover: the fake was not run (rc=$RC): $(cat "$TMP/o1")"
fi

# exec, not fork+wait: the fake runs as giantvm's own process.
rm -f "$ARGV" "$ARGV.pid"
FAKE_ARGV_OUT=$ARGV GIANTVM_SYSROOT=$SR_MOD "$G" run --giantvm-qemu "$FAKE" --giantvm-conf "$CONF" \
    --giantvm-id 0 -- qemu-system-x86_64 -smp 6 </dev/null >"$TMP/o2" 2>&1 &
PID=$!
wait "$PID"
RC=$?
if [[ -s $ARGV.pid && $(cat "$ARGV.pid") == "$PID" && $RC == 42 ]]; then
    ok "handover: giantvm exec()s the original QEMU (same pid $PID)"
else
    bad "handover: fake pid '$(cat "$ARGV.pid" 2>/dev/null)', giantvm pid $PID, rc=$RC"
fi
argv_is -smp 6 -local-cpu "2,start=0,$want_iplist" && ok "handover: id 0 -> -local-cpu 2,start=0,..." ||
    bad "handover id 0: argv '$(tr '\n' ' ' <"$ARGV" 2>/dev/null)'"

# $GIANTVM_QEMU instead of --giantvm-qemu; --giantvm-cpus overrides -smp / nodes
run_orig "$TMP/o3" env "GIANTVM_QEMU=$FAKE" "$G" run --giantvm-conf "$CONF" --giantvm-id 2 \
    --giantvm-cpus 3 -- qemu-system-x86_64 -smp cpus=9,sockets=1 -m 2G
if ((RC == 42)) && [[ -s $ARGV ]]; then
    ok "\$GIANTVM_QEMU: the fake ran, exit 42"
    argv_is -smp cpus=9,sockets=1 -m 2G -local-cpu "3,start=6,$want_iplist" &&
        ok "--giantvm-cpus 3 --giantvm-id 2 -> -local-cpu 3,start=6,..." ||
        bad "\$GIANTVM_QEMU run: argv '$(tr '\n' ' ' <"$ARGV")'"
else
    bad "\$GIANTVM_QEMU: rc=$RC, fake ran: $([[ -s $ARGV ]] && echo yes || echo no): $(cat "$TMP/o3")"
fi
# --giantvm-qemu wins over $GIANTVM_QEMU
run_orig "$TMP/o4" env "GIANTVM_QEMU=$TMP/not-there" "$G" run --giantvm-qemu "$FAKE" \
    --giantvm-conf "$CONF" --giantvm-id 0 -- qemu-system-x86_64 -smp 3
((RC == 42)) && argv_is -smp 3 -local-cpu "1,start=0,$want_iplist" &&
    ok "--giantvm-qemu takes precedence over \$GIANTVM_QEMU" || bad "--giantvm-qemu vs \$GIANTVM_QEMU: rc=$RC"

# error cases: clear message, non-zero exit, the fake never runs
# err_case NAME PATTERN ARGS... (PATTERN: an extended regex the stderr must match)
err_case() {
    local name=$1 pat=$2 msg
    shift 2
    run_orig "$TMP/oe" "$@"
    msg=$(grep -v '^\[GiantVM\]' "$TMP/oe")
    if ((RC != 0 && RC != 42 && RC != 124)) && [[ ! -e $ARGV ]] && grep -qE "$pat" <<<"$msg"; then
        ok "$name: exit $RC, ${msg//$'\n'/ | }"
    else
        bad "$name: rc=$RC, fake ran: $([[ -e $ARGV ]] && echo yes || echo no), output: $(cat "$TMP/oe")"
    fi
}
err_case "missing original QEMU binary" "$TMP/no-such-qemu.*(No such file|not found)" \
    "$G" run --giantvm-qemu "$TMP/no-such-qemu" --giantvm-conf "$CONF" --giantvm-id 1 -- qemu-system-x86_64 -smp 6
err_case "missing \$GIANTVM_QEMU binary" "$TMP/no-such-qemu.*(No such file|not found)" \
    env "GIANTVM_QEMU=$TMP/no-such-qemu" "$G" run --giantvm-conf "$CONF" --giantvm-id 1 -- qemu-system-x86_64
: >"$TMP/not-executable"
err_case "non-executable original QEMU" "not-executable.*Permission denied" \
    "$G" run --giantvm-qemu "$TMP/not-executable" --giantvm-conf "$CONF" --giantvm-id 1 -- qemu-system-x86_64
err_case "no original QEMU given" "giantvm-qemu|GIANTVM_QEMU" \
    env -u GIANTVM_QEMU "$G" run --giantvm-conf "$CONF" --giantvm-id 1 -- qemu-system-x86_64
err_case "--giantvm-id out of range" "giantvm-id 3.*3 nodes" \
    "$G" run --giantvm-qemu "$FAKE" --giantvm-conf "$CONF" --giantvm-id 3 -- qemu-system-x86_64 -smp 6
err_case "no --giantvm-conf/--giantvm-id" "giantvm-conf.*giantvm-id" \
    "$G" run --giantvm-qemu "$FAKE" -- qemu-system-x86_64 -smp 6
err_case "missing cluster file" "$TMP/no-such.conf" \
    "$G" run --giantvm-qemu "$FAKE" --giantvm-conf "$TMP/no-such.conf" --giantvm-id 0 -- qemu-system-x86_64
printf 'h1.example:7001\nh2.example:notaport\n' >"$TMP/bad.conf"
err_case "bad cluster file line" "bad\.conf:2:" \
    "$G" run --giantvm-qemu "$FAKE" --giantvm-conf "$TMP/bad.conf" --giantvm-id 0 -- qemu-system-x86_64
finish
