#!/usr/bin/env bash
# tests/e2e/test_run_ram_layouts.sh — `giantvm run` with the embedded pool
# (no --pool, $GIANTVM_POOL unset, no ./cluster_uffd.conf: runs in a fresh
# temp dir) and the guest RAM laid out in different ways:
#   (a) -m 5G (above 4 GiB)             -> "guest RAM 'pc.ram': 5120 MiB in the pool"
#   (b) -object memory-backend-ram,id=mem0,size=512M -machine memory-backend=mem0 -m 512M
#                                       -> "guest RAM 'mem0': 512 MiB in the pool"
#   (c) two NUMA nodes on backends m0 and m1 (256M each), -m 512M
#                                       -> both 'm0' and 'm1' attached
#   each boots and runs the workload (gvm.mib=16): verify=ok, expected checksum;
#   (d) -object memory-backend-memfd,id=mf,size=512M,share=on -machine memory-backend=mf
#       -> refused: non-zero exit, an error naming share=on, the guest never
#       runs (no GIANTVM-BOOT line).
# Each boot runs under `timeout 300`.
#
# Env: GVM_TEST_SEED (default 5), GVM_TEST_TIMEOUT (default 300 s),
#      GVM_BUILD_DIR (default <repo>/build), GIANTVM_CACHE (see guest.sh),
#      CI=true: a missing prerequisite fails instead of skipping.
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2317  # ok() always succeeds; trap handlers
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh"

SEED=${GVM_TEST_SEED:-5}
TIMEOUT=${GVM_TEST_TIMEOUT:-300}
MIB=16
BUILD=${GVM_BUILD_DIR:-$REPO/build}

# shellcheck source=harness.sh
. "$HERE/harness.sh"

if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' in $REPO first)"
    finish
fi

TMP=$(mktemp -d /tmp/gvm-e2e-layouts.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup

# Snapshot of the build (a concurrent `make` cannot swap it under the test);
# the preload library is looked up next to the giantvm binary.
snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
expect=$("$GVM_WORKLOAD" --expect "$MIB" "$SEED")
note "kernel: $GVM_KERNEL_PKG; expected checksum for mib=$MIB seed=$SEED: $expect"

# The guest's QEMU arguments without gvm_guest_qemu_args' "-m MEM" pair; each
# case adds its own memory options.
mapfile -t base < <(gvm_guest_qemu_args 512 "$MIB" "gvm.seed=$SEED")
args=()
for ((i = 0; i < ${#base[@]}; i++)); do
    if [[ ${base[i]} == -m ]]; then
        i=$((i + 1))
        continue
    fi
    args+=("${base[i]}")
done
if ((${#args[@]} == ${#base[@]} - 2)); then ok "guest args without -m (${#args[@]} words)"; else
    bad "guest args: expected exactly one -m pair in: ${base[*]}"
    finish
fi

# Embedded pool: a fresh cwd (no ./cluster_uffd.conf) and no $GIANTVM_POOL.
WORK=$TMP/cwd
mkdir -p "$WORK"
unset GIANTVM_POOL

LOG=
RC=
# boot NAME MEMORY-ARGS... : giantvm run in $WORK; sets LOG, RC, OUT (output and
# giantvm's log $LOG.gvm, without \r)
boot() {
    local name=$1 t0
    shift
    LOG=$TMP/$name.log
    t0=$(date +%s.%N)
    # giantvm's own lines go to its log (--log), QEMU's stderr stays QEMU's
    rm -f "$LOG.gvm"
    (cd "$WORK" && exec timeout -k 10 "$TIMEOUT" "$G" run --log "$LOG.gvm" -- qemu-system-x86_64 "${args[@]}" "$@") </dev/null >"$LOG" 2>&1
    RC=$?
    OUT=$(cat "$LOG" "$LOG.gvm" 2>/dev/null | tr -d '\r')
    note "$name: rc=$RC in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
}

re='^GIANTVM-RESULT mib=([0-9]+) seed=([0-9]+) checksum=([0-9a-f]{16}) verify=([A-Za-z]+) '
# check_guest NAME: exit 0, embedded pool, workload verified with the expected checksum
check_guest() {
    local name=$1 res
    if ((RC == 0)); then ok "$name: giantvm run exited 0"; else
        bad "$name: exit status $RC (124 = timeout ${TIMEOUT}s); log tail:"
        show_tail "$LOG"
    fi
    grep -q '^\[GiantVM\] pool: 1 node (embedded)' <<<"$OUT" && ok "$name: embedded pool" ||
        bad "$name: no '[GiantVM] pool: 1 node (embedded)' line"
    res=$(grep -m1 '^GIANTVM-RESULT ' <<<"$OUT")
    if [[ $res =~ $re && ${BASH_REMATCH[4]} == ok && ${BASH_REMATCH[3]} == "$expect" ]]; then
        ok "$name: verify=ok checksum=$expect"
    else
        bad "$name: result '${res:-<none>}' (want verify=ok checksum=$expect)"
    fi
}
has_line() { grep -qF "$1" <<<"$OUT"; }

# (a) above 4 GiB: QEMU splits it into below/above-4G regions, one RAM block
boot above4g -m 5G
check_guest above4g
has_line "guest RAM 'pc.ram': 5120 MiB in the pool" && ok "above4g: guest RAM 'pc.ram': 5120 MiB in the pool" ||
    bad "above4g: no \"guest RAM 'pc.ram': 5120 MiB in the pool\" line"

# (b) an explicit memory backend
boot backend -object memory-backend-ram,id=mem0,size=512M -machine memory-backend=mem0 -m 512M
check_guest backend
has_line "guest RAM 'mem0': 512 MiB in the pool" && ok "backend: guest RAM 'mem0': 512 MiB in the pool" ||
    bad "backend: no \"guest RAM 'mem0': 512 MiB in the pool\" line"
has_line "guest RAM 'pc.ram'" && bad "backend: a 'pc.ram' block was attached as well"

# (c) two NUMA nodes, one backend each: both blocks attached
boot numa -object memory-backend-ram,id=m0,size=256M -object memory-backend-ram,id=m1,size=256M \
    -numa node,memdev=m0 -numa node,memdev=m1 -m 512M
check_guest numa
for b in m0 m1; do
    has_line "guest RAM '$b': 256 MiB in the pool" && ok "numa: guest RAM '$b': 256 MiB in the pool" ||
        bad "numa: no \"guest RAM '$b': 256 MiB in the pool\" line"
done
n=$(grep -c "^\[GiantVM\] guest RAM '" <<<"$OUT")
[[ $n == 2 ]] && ok "numa: exactly 2 blocks attached" || bad "numa: $n blocks attached, want 2"

# (d) a shared backend cannot live in the pool: refused before the guest runs
boot shared -object memory-backend-memfd,id=mf,size=512M,share=on -machine memory-backend=mf -m 512M
if ((RC != 0 && RC != 124)); then ok "shared: refused with exit status $RC"; else
    bad "shared: exit status $RC, want a refusal (non-zero, not a timeout)"
fi
err=$(grep -m1 '^giantvm run: .*share=on' <<<"$OUT")
if [[ -n $err && $err == *"'mf'"* ]]; then ok "shared: error names 'mf' and share=on: ${err#giantvm run: }"; else
    bad "shared: no 'giantvm run: ...share=on...' error naming 'mf'; log tail:"
    show_tail "$LOG"
fi
if has_line "GIANTVM-BOOT" || has_line "GIANTVM-RESULT"; then bad "shared: the guest ran"; else
    ok "shared: the guest never ran (no GIANTVM-BOOT line)"
fi
has_line "[GiantVM] VM '" && bad "shared: giantvm said the VM is running"
finish
