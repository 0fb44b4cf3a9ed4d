#!/usr/bin/env bash
# tests/e2e/test_run_errors.sh — `giantvm run` refuses what it cannot do, with
# a clear message, a non-zero exit and (where it matters) before QEMU starts.
# UFFD mode (empty $GIANTVM_SYSROOT), embedded pool unless a case gives --pool.
#
#   vfio-pci device           -> message about vfio and pinning, exit != 0, QEMU never started
#   pool node down            -> message naming that node (and FILE:LINE), exit != 0, QEMU never started
#   no accelerator given      -> the guest boots and verifies; the accelerator line says
#                                KVM only where detection says it can run it, TCG otherwise
#   -enable-kvm, no /dev/kvm  -> clear KVM error, QEMU never started
#                                (usable KVM: accepted and the guest verifies; a /dev/kvm
#                                that cannot run it, e.g. kvm_pvm: a warning, passed as given)
#   no `--`                   -> usage error, exit 2
#   --prefetch 3              -> exit 2, message naming --prefetch
#   bad pool file line        -> "FILE:LINE:" in the error, exit != 0, QEMU never started
#   QEMU failing at start-up  -> giantvm run's exit status is QEMU's (non-zero)
# "QEMU never started" is checked with a stand-in QEMU that only leaves a
# marker file (it would be exec'd in QEMU's place), and with the real QEMU by
# the absence of the guest's GIANTVM-BOOT line and a quick return.
#
# Env: GVM_BUILD_DIR (default <repo>/build), GIANTVM_CACHE (see guest.sh),
#      CI=true: a missing prerequisite fails instead of skipping.
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2317  # ok() always succeeds; trap handlers
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh"
BUILD=${GVM_BUILD_DIR:-$REPO/build}
QUICK=15 # seconds a refusal may take at most

# shellcheck source=harness.sh
. "$HERE/harness.sh"

if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' in $REPO first)"
    finish
fi

TMP=$(mktemp -d /tmp/gvm-e2e-errors.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup

snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
mapfile -t GUEST < <(gvm_guest_qemu_args 256 16 gvm.seed=2)
((${#GUEST[@]})) || { bad "gvm_guest_qemu_args"; finish; }

# UFFD mode whatever this machine has loaded; embedded pool: fresh cwd, no $GIANTVM_POOL.
# The sysroot mirrors this host's KVM (the device and the KVM modules), not
# the GiantVM module.
mkdir -p "$TMP/cwd"
mirror_host_kvm "$TMP/sysroot"
note "this host's KVM: $host_kvm"
export GIANTVM_SYSROOT=$TMP/sysroot
unset GIANTVM_POOL GIANTVM_QEMU

# Stand-in QEMU: leaves a marker and fails.  If giantvm started it, the marker exists.
FAKE=$TMP/qemu-marker
MARK=$TMP/qemu-started
printf '#!/bin/sh\necho "$@" >"%s"\nexit 1\n' "$MARK" >"$FAKE"
chmod 755 "$FAKE"

# run NAME TIMEOUT ARGS... : giantvm ARGS in $TMP/cwd; sets RC, OUT, SECS, LOG.
# `giantvm run` gets --log $LOG.gvm (its own lines; QEMU's stderr stays
# QEMU's): OUT is the output (errors that end the run included), then that log.
run() {
    local name=$1 to=$2 t0
    shift 2
    LOG=$TMP/$name.log
    rm -f "$MARK" "$LOG.gvm"
    [[ ${1:-} == run ]] && set -- run --log "$LOG.gvm" "${@:2}"
    t0=$(date +%s.%N)
    (cd "$TMP/cwd" && exec timeout -k 5 "$to" "$G" "$@") </dev/null >"$LOG" 2>&1
    RC=$?
    SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    OUT=$(cat "$LOG" "$LOG.gvm" 2>/dev/null | tr -d '\r')
}
# The giantvm run error message(s): stderr lines from giantvm, not QEMU.
errmsg() { grep -E '^giantvm( run)?:' <<<"$OUT" | grep -v 'memserver: listening' | awk '!seen[$0]++' | tr '\n' ' '; }
# refused NAME REGEX: non-zero (not timeout), quick, message matches REGEX (case-insensitive)
refused() {
    local name=$1 re=$2 m
    m=$(errmsg)
    if ((RC != 0 && RC != 124 && RC != 137)) && grep -qiE "$re" <<<"$m"; then
        ok "$name: exit $RC in ${SECS}s: ${m% }"
    else
        bad "$name: exit $RC in ${SECS}s, want a refusal matching /$re/; output:"
        show_tail "$LOG"
    fi
}
never_started() {
    local name=$1
    if [[ -e $MARK ]]; then bad "$name: QEMU was started (stand-in ran with: $(cat "$MARK"))"; else
        ok "$name: QEMU never started"
    fi
}
no_guest() {
    local name=$1
    if grep -q 'GIANTVM-BOOT' <<<"$OUT"; then bad "$name: the guest booted"; else
        awk -v s="$SECS" -v q="$QUICK" 'BEGIN { exit !(s < q) }' &&
            ok "$name (real QEMU): refused in ${SECS}s, no GIANTVM-BOOT" ||
            bad "$name (real QEMU): took ${SECS}s (want < ${QUICK}s)"
    fi
}

# ---------------------------------------------------------------- vfio-pci
# shellcheck disable=SC2054  # one QEMU option value
VFIO=(-device vfio-pci,host=01:00.0)
run vfio 30 run -- "$FAKE" "${GUEST[@]}" "${VFIO[@]}"
refused vfio 'vfio.*pin|pin.*vfio'
never_started vfio
run vfio-real 60 run -- qemu-system-x86_64 "${GUEST[@]}" "${VFIO[@]}"
if ((RC != 0)); then no_guest vfio; else bad "vfio (real QEMU): exit 0"; fi
run vfio-eq 30 run -- "$FAKE" "${GUEST[@]}" -device driver=vfio-pci,host=01:00.0
refused "vfio (-device driver=vfio-pci)" 'vfio.*pin|pin.*vfio'
# the JSON form libvirt writes
run vfio-json 30 run -- "$FAKE" "${GUEST[@]}" -device '{"driver":"vfio-pci","host":"0000:01:00.0","id":"hostdev0"}'
refused "vfio (-device '{\"driver\":\"vfio-pci\",...}')" 'vfio.*pin|pin.*vfio'
never_started "vfio (JSON)"
run vfio-allowed 30 run --allow-vfio-pinning -- "$FAKE" "${GUEST[@]}" -device '{"driver":"vfio-pci","host":"0000:01:00.0"}'
[[ -e $MARK ]] && ok "vfio with --allow-vfio-pinning: QEMU started" ||
    bad "vfio with --allow-vfio-pinning: QEMU not started: $(errmsg)"

# ---------------------------------------------------------------- mem-lock
# mlockall() would fault every guest page in locally before the attach.
run memlock 30 run -- "$FAKE" "${GUEST[@]}" -overcommit mem-lock=on
refused "-overcommit mem-lock=on" 'mem-lock=on'
never_started "-overcommit mem-lock=on"
run memlock-rt 30 run -- "$FAKE" "${GUEST[@]}" -overcommit cpu-pm=off -realtime mlock=on
refused "-realtime mlock=on" 'mem-lock=on|mlock=on'

# ---------------------------------------------------------------- stderr stays QEMU's
# kvm-unit-tests counts any stderr line as QEMU's failure: a good run adds
# nothing to stderr, its lines are in the log the stdout line names.
rm -f "$TMP/clean.gvm"
(cd "$TMP/cwd" && exec timeout -k 5 300 "$G" run --vm-id "clean-$$" --log "$TMP/clean.gvm" -- \
    qemu-system-x86_64 "${GUEST[@]}") </dev/null >"$TMP/clean.out" 2>"$TMP/clean.err"
RC=$?
if ((RC == 0)) && grep -q '^GIANTVM-RESULT .* verify=ok ' "$TMP/clean.out"; then ok "clean run: guest verified"; else
    bad "clean run: exit $RC"
    show_tail "$TMP/clean.out"
fi
if [[ ! -s $TMP/clean.err ]]; then ok "clean run: nothing on stderr"; else
    bad "clean run: stderr has: $(head -n 3 "$TMP/clean.err")"
fi
grep -qxF "[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode. Log: $TMP/clean.gvm" "$TMP/clean.out" &&
    ok "clean run: the one stdout line names the log" || bad "clean run: no mode line naming $TMP/clean.gvm"
grep -q "^\[GiantVM\] guest RAM 'pc.ram': 256 MiB in the pool" "$TMP/clean.gvm" &&
    grep -q '^giantvm: preload: guest RAM block' "$TMP/clean.gvm" &&
    ok "clean run: giantvm's and the preload's lines are in the log" ||
    bad "clean run: log lacks giantvm's or the preload's lines: $(head -n 5 "$TMP/clean.gvm")"

# ---------------------------------------------------------------- a pool node is down
# A loopback port nobody listens on: bind an ephemeral port, note it, release it.
free_port() {
    local p
    for ((p = 20000 + RANDOM % 20000; ; p = 20000 + RANDOM % 20000)); do
        # nothing listening on it (connect refused) -> take it
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}
DOWN=$(free_port)
UP_PORT=
# One node up (an embedded-style loopback memserver), one down: the down one is named.
"$G" memserver --listen 127.0.0.1:0 --port-file "$TMP/up.port" >"$TMP/up.log" 2>&1 &
SERVER_PIDS+=($!)
wait_ports "$TMP/up.port"
UP_PORT=$(head -n1 "$TMP/up.port" 2>/dev/null)
POOL=$TMP/down.conf
if [[ -n $UP_PORT ]]; then
    printf '# one node up, one down\n127.0.0.1:%s\n127.0.0.1:%s\n' "$UP_PORT" "$DOWN" >"$POOL"
else
    bad "pool node down: helper memserver did not start: $(cat "$TMP/up.log")"
    printf '127.0.0.1:%s\n' "$DOWN" >"$POOL"
fi
note "pool: $(grep -v '^#' "$POOL" | tr '\n' ' ')(127.0.0.1:$DOWN is down)"
line=$(grep -n ":$DOWN\$" "$POOL" | cut -d: -f1)
run pooldown 30 run --pool "$POOL" -- "$FAKE" "${GUEST[@]}"
refused "pool node down" "127\.0\.0\.1:$DOWN"
m=$(errmsg)
[[ $m == *"$POOL:$line"* ]] && ok "pool node down: error gives $POOL:$line" ||
    bad "pool node down: error lacks '$POOL:$line': $m"
never_started "pool node down"
run pooldown-real 60 run --pool "$POOL" -- qemu-system-x86_64 "${GUEST[@]}"
if ((RC != 0)); then no_guest "pool node down"; else bad "pool node down (real QEMU): exit 0"; fi
stop_servers

# ---------------------------------------------------------------- -S: the user's own cont
# With -S the user resumes the guest on a monitor of their own; giantvm run
# then attaches RAM as QEMU maps it. The attach is delayed 2 s (test knob) and
# `cont` is sent on an HMP monitor the moment its port accepts, before any
# block is attached: QEMU runs it only from its main loop, after the attach.
MPORT=$(free_port)
rm -f "$TMP/users.gvm"
(cd "$TMP/cwd" && exec env GIANTVM_TEST_ATTACH_DELAY_MS=2000 timeout -k 5 300 "$G" run --vm-id "users-$$" \
    --log "$TMP/users.gvm" -- qemu-system-x86_64 "${GUEST[@]}" -S -monitor "tcp:127.0.0.1:$MPORT,server=on,wait=off") \
    </dev/null >"$TMP/users.out" 2>"$TMP/users.err" &
upid=$!
sent=
for ((t = 0; t < 400; t++)); do
    if { exec 5<>"/dev/tcp/127.0.0.1/$MPORT"; } 2>/dev/null; then
        printf 'cont\n' >&5
        sent=$(grep -c 'attached as QEMU mapped it' "$TMP/users.gvm" 2>/dev/null)
        break
    fi
    kill -0 "$upid" 2>/dev/null || break
    sleep 0.05
done
wait "$upid"
RC=$?
exec 5>&- 2>/dev/null
if [[ $sent == 0 ]] && grep -q 'test: delaying the attach by 2000 ms' "$TMP/users.gvm"; then
    ok "-S: cont sent on the user's monitor with no block attached yet (inside the 2 s delay)"
else
    bad "-S: cont not sent inside the delay (blocks attached when sent: '${sent:-never sent}')"
fi
n0=$(grep -c 'attached as QEMU mapped it (0 pages resident before)' "$TMP/users.gvm")
nall=$(grep -c 'attached as QEMU mapped it' "$TMP/users.gvm")
if ((RC == 0)) && grep -q '^GIANTVM-RESULT .* verify=ok ' "$TMP/users.out" && ((nall >= 1 && n0 == nall)); then
    ok "-S: guest verified; $nall RAM blocks attached as QEMU mapped them, 0 pages resident before each"
else
    bad "-S: exit $RC, $n0 of $nall blocks attached with 0 resident"
    show_tail "$TMP/users.out"
    show_tail "$TMP/users.gvm"
fi
[[ ! -s $TMP/users.err ]] && ok "-S: nothing on stderr" || bad "-S: stderr has: $(head -n 3 "$TMP/users.err")"

# ---------------------------------------------------------------- -enable-kvm
# The guest args minus their "-accel tcg" pair, plus -enable-kvm.
KVM_ARGS=()
for ((i = 0; i < ${#GUEST[@]}; i++)); do
    if [[ ${GUEST[i]} == -accel ]]; then
        i=$((i + 1))
        continue
    fi
    KVM_ARGS+=("${GUEST[i]}")
done
# No accelerator on the command line: giantvm picks one, says which and why,
# and the guest boots (never a hang on a KVM that cannot run it).
want_acc=tcg
[[ $host_kvm == usable ]] && want_acc=kvm
run noaccel 300 run -- qemu-system-x86_64 "${KVM_ARGS[@]}"
acc_line=$(grep -m1 '^\[GiantVM\] UFFD Mode: accelerator' <<<"$OUT")
if ((RC == 0)) && grep -q '^GIANTVM-RESULT .* verify=ok ' <<<"$OUT" &&
    [[ $acc_line =~ accelerator\ $want_acc\ \(.+\) ]]; then
    ok "no accelerator given ($host_kvm KVM): guest verified in ${SECS}s; $acc_line"
else
    bad "no accelerator given ($host_kvm KVM): exit $RC, want $want_acc; line '$acc_line'"
    show_tail "$LOG"
fi
KVM_ARGS+=(-enable-kvm)
case $host_kvm in
usable)
    run kvm 300 run -- qemu-system-x86_64 "${KVM_ARGS[@]}"
    if ((RC == 0)) && grep -q '^GIANTVM-RESULT .* verify=ok ' <<<"$OUT"; then
        ok "-enable-kvm with a usable /dev/kvm: accepted, guest verified (${SECS}s)"
    else
        bad "-enable-kvm with a usable /dev/kvm: exit $RC"
        show_tail "$LOG"
    fi
    ;;
doubtful)
    # Passed to QEMU as given (the user may run a PVM-built kernel), with a
    # warning; the stand-in QEMU records its argv: -enable-kvm, no -accel added.
    run kvm-doubtful 30 run -- "$FAKE" "${KVM_ARGS[@]}"
    if grep -q '^giantvm run: warning: KVM was requested .*passed as given' <<<"$OUT" &&
        [[ -s $MARK ]] && grep -q -- '-enable-kvm' "$MARK" && ! grep -q -- '-accel' "$MARK"; then
        ok "-enable-kvm on a /dev/kvm that cannot run a standard guest: warning, passed as given"
    else
        bad "-enable-kvm on a doubtful /dev/kvm: exit $RC, argv '$(cat "$MARK" 2>/dev/null)': $OUT"
    fi
    ;;
none)
    run kvm 30 run -- "$FAKE" "${KVM_ARGS[@]}"
    refused "-enable-kvm without /dev/kvm" 'kvm'
    never_started "-enable-kvm without /dev/kvm"
    run kvm-accel 30 run -- "$FAKE" "${KVM_ARGS[@]/-enable-kvm/-accel}" kvm
    refused "-accel kvm without /dev/kvm" 'kvm'
    never_started "-accel kvm without /dev/kvm"
    run kvm-real 60 run -- qemu-system-x86_64 "${KVM_ARGS[@]}"
    if ((RC != 0)); then no_guest "-enable-kvm without /dev/kvm"; else bad "-enable-kvm (real QEMU): exit 0"; fi
    ;;
esac

# ---------------------------------------------------------------- usage errors
run prealloc-nocap 10 memserver --prealloc --listen 127.0.0.1:0
if ((RC == 2)) && grep -q -- '--prealloc needs --capacity' <<<"$OUT"; then ok "memserver --prealloc without --capacity: exit 2"; else
    bad "memserver --prealloc without --capacity: exit $RC (want 2): $OUT"
fi
run prealloc-backing 10 memserver --prealloc --capacity 64M --backing "$TMP/pages.bin" --listen 127.0.0.1:0
if ((RC == 2)) && grep -q -- '--prealloc is for the RAM store' <<<"$OUT" && [[ ! -e $TMP/pages.bin ]]; then
    ok "memserver --prealloc --backing: exit 2, no file made"
else
    bad "memserver --prealloc --backing: exit $RC (want 2): $OUT"
fi
run nodash 10 run "$FAKE" "${GUEST[@]}"
if ((RC == 2)) && grep -qiE 'usage|--|unknown option' <<<"$(errmsg)"; then ok "no '--': usage error, exit 2: $(errmsg)"; else
    bad "no '--': exit $RC (want 2): $OUT"
fi
never_started "no '--'"
run noqemu 10 run
if ((RC == 2)) && grep -qi 'no QEMU command' <<<"$OUT"; then ok "giantvm run (nothing): exit 2: $(errmsg)"; else
    bad "giantvm run (nothing): exit $RC (want 2): $OUT"
fi
run onlydash 10 run --pool "$TMP/whatever" --
if ((RC == 2)) && grep -qi 'no QEMU command' <<<"$OUT"; then ok "giantvm run --pool F -- (no QEMU): exit 2"; else
    bad "giantvm run --pool F --: exit $RC (want 2): $OUT"
fi
run prefetch 10 run --prefetch 3 -- "$FAKE" "${GUEST[@]}"
if ((RC == 2)) && grep -q -- '--prefetch' <<<"$(errmsg)"; then ok "--prefetch 3: exit 2: $(errmsg)"; else
    bad "--prefetch 3: exit $RC (want 2): $OUT"
fi
never_started "--prefetch 3"
for v in 0 64 x; do
    run prefetch 10 run --prefetch "$v" -- "$FAKE"
    ((RC == 2)) && grep -q -- '--prefetch' <<<"$(errmsg)" && ok "--prefetch $v: exit 2" || bad "--prefetch $v: exit $RC: $OUT"
done

# ---------------------------------------------------------------- bad pool file line
BADPOOL=$TMP/bad-pool.conf
printf '# pool\n127.0.0.1:%s\n\n127.0.0.1:99999\n' "${UP_PORT:-9999}" >"$BADPOOL"
run badpool 10 run --pool "$BADPOOL" -- "$FAKE" "${GUEST[@]}"
refused "bad pool line" "$BADPOOL:4:"
never_started "bad pool line"
printf '127.0.0.1:7001\n127.0.0.1:7001\n' >"$BADPOOL"
run badpool2 10 run --pool "$BADPOOL" -- "$FAKE"
refused "duplicate pool line" "$BADPOOL:2:.*duplicate"
run badpool3 10 run --pool "$TMP/no-such-pool.conf" -- "$FAKE"
refused "missing pool file" "no-such-pool\.conf"
never_started "missing pool file"

# ---------------------------------------------------------------- QEMU fails at start-up
# giantvm run's exit status is QEMU's: a QEMU that dies before its monitor is
# up must not turn into success.
run qemufail 60 run -- qemu-system-x86_64 "${GUEST[@]}" -no-such-qemu-option
if ((RC != 0 && RC != 124)); then ok "QEMU rejecting its arguments: giantvm run exits $RC"; else
    bad "QEMU rejecting its arguments: giantvm run exited $RC, want QEMU's non-zero status; output: $(errmsg)"
fi
run qemufail2 60 run -- "$FAKE"
if ((RC == 1)) && [[ -e $MARK ]]; then ok "stand-in QEMU exiting 1 at once: giantvm run exits 1"; else
    bad "stand-in QEMU exiting 1 at once: giantvm run exited $RC, want 1; output: $(errmsg)"
fi
finish
