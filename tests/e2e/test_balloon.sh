#!/usr/bin/env bash
# tests/e2e/test_balloon.sh — memory a guest frees leaves local memory and the
# pool's copies are never fetched again: a 256 MiB guest under `giantvm run
# --local-mem 64M` (embedded pool) with QEMU's virtio-balloon and free page
# reporting (gvm.balloon=1, tests/e2e/guest.sh) runs the workload over 64 MiB
# three times, 4 s apart (each run frees its 64 MiB when it exits; the guest
# reports free 2 MiB blocks ~2 s later and QEMU discards them with madvise,
# which the preload library tells the engine about first).
#   balloon     the guest loaded its virtio-balloon driver (GIANTVM-BALLOON ok)
#   runs        all three runs verify=ok with the checksums computed on the host
#               (memory given back and taken again reads right)
#   discarded   the engine's discarded_pages (giantvm stat --json at exit) is at
#               least one run's worth of pages (64 MiB): the madvise calls
#               reached it
#
# Env: GVM_TEST_SEED (default 3), GVM_TEST_TIMEOUT (seconds, default 300),
#      GIANTVM_CACHE (see guest.sh). A missing prerequisite (the guest cannot be
#      prepared, no kernel .deb for the balloon modules): SKIP, exit 77; with
#      CI=true it fails.
# Closing line: "N passed, M failed"; exit 0 iff nothing failed.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$REPO/$BUILD
# shellcheck source=guest.sh
. "$HERE/guest.sh"
# shellcheck source=harness.sh
. "$HERE/harness.sh"

SEED=${GVM_TEST_SEED:-3}
TIMEOUT=${GVM_TEST_TIMEOUT:-300}
MEM=256 MIB=64 RUNS=3

[[ -x $BUILD/giantvm && -r $BUILD/libgiantvm-preload.so ]] || { bad "build: $BUILD/giantvm missing"; finish; }
TMP=$(mktemp -d /tmp/gvm-e2e-balloon.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup
snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm
gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
[[ -n $(_gvm_balloon_modules 2>/dev/null) ]] ||
    missing "no virtio-balloon modules for $GVM_KERNEL_PKG (the kernel's .deb is not in the cache)"
note "kernel: $GVM_KERNEL_PKG"

mapfile -t args < <(gvm_guest_qemu_args "$MEM" "$MIB" "gvm.seed=$SEED" gvm.balloon=1 "gvm.runs=$RUNS" gvm.pause=4)
(cd "$TMP" && GIANTVM_STATS_OUT=$TMP/stats.json timeout -k 10 "$TIMEOUT" "$G" run --local-mem 64M -- \
    qemu-system-x86_64 "${args[@]}" </dev/null >"$TMP/run.out" 2>"$TMP/run.err")
rc=$?
log=$(tr -d '\r' <"$TMP/run.out")
if ((rc == 0)); then ok "giantvm run exited 0"; else
    bad "giantvm run exit $rc (124 = timeout ${TIMEOUT}s)"; show_tail "$TMP/run.err" 20; show_tail "$TMP/run.out" 20
fi
b=$(grep -m1 '^GIANTVM-BALLOON ' <<<"$log")
[[ $b == "GIANTVM-BALLOON ok" ]] && ok "balloon: the guest's virtio-balloon driver is up" || bad "balloon: '${b:-no GIANTVM-BALLOON line}'"
for ((i = 0; i < RUNS; i++)); do
    want=$("$GVM_WORKLOAD" --expect "$MIB" $((SEED + i)))
    r=$(grep "^GIANTVM-RESULT mib=$MIB seed=$((SEED + i)) " <<<"$log" | head -n1)
    if [[ $r == *" checksum=$want verify=ok "* ]]; then ok "run $((i + 1)): verify=ok, checksum $want"; else
        bad "run $((i + 1)): '${r:-no result line}', want checksum $want verify=ok"
    fi
done
d=$(grep -o '"discarded_pages":[0-9]*' "$TMP/stats.json" 2>/dev/null | cut -d: -f2)
if [[ -n $d ]] && ((d >= MIB * 256)); then
    ok "discarded: $d pages the guest freed were given back ($((d / 256)) MiB; one run is $MIB MiB)"
else
    bad "discarded_pages '${d:-missing}' < $((MIB * 256)) (stats: $(head -c 300 "$TMP/stats.json" 2>/dev/null))"
fi
note "engine at exit: $(grep -o '"\(faults\|pages_fetched\|local_zero_pages\|evictions\|writebacks\)":[0-9]*' "$TMP/stats.json" 2>/dev/null | tr '\n' ' ')"
finish
