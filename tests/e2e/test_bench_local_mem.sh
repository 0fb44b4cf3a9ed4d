#!/usr/bin/env bash
# tests/e2e/test_bench_local_mem.sh — `giantvm bench --local-mem` end to end.
#
#   giantvm bench --size 64M --local-mem 16M --samples 100 --json on the
#   embedded pool (no pool file): exit 0, one JSON object with
#   "verified":true, local_mem_bytes = 16 MiB, evict_writebacks > 0 (a
#   region 4x the budget was written, so most of it went to the pool),
#   evict_clean_drops > 0 (the read pass dropped pages it only read) and
#   positive evict_write_GBps / evict_read_GBps. Every page of both passes
#   is verified by the bench itself. Then usage errors: --local-mem not
#   below --size, and below 4M, exit 2 naming the option.
#
# Env: GVM_BUILD_DIR (default <repo>/build).
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck source-path=SCRIPTDIR disable=SC2015  # ok() always succeeds
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${GVM_BUILD_DIR:-$REPO/build}
# shellcheck source=harness.sh
. "$HERE/harness.sh"

if [[ ! -x $BUILD/giantvm ]]; then
    bad "build: $BUILD/giantvm missing (run 'make -j2' in $REPO first)"
    finish
fi
TMP=$(mktemp -d /tmp/gvm-e2e-benchlm.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup
snapshot_build || { bad "cannot copy the build to $TMP/bin"; finish; }
G=$TMP/bin/giantvm
unset GIANTVM_POOL
cd "$TMP" || { bad "cd $TMP"; finish; } # no cluster_uffd.conf here: the embedded pool

# num KEY JSON: the number after "KEY": in JSON (empty if absent)
num() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }

out=$(timeout 300 "$G" bench --size 64M --local-mem 16M --samples 100 --json 2>"$TMP/err")
rc=$?
json=$(grep -m1 '^{' <<<"$out")
if ((rc == 0)) && [[ -n $json ]]; then ok "bench --local-mem: exit 0, JSON"; else
    bad "bench --local-mem: exit $rc, output '$out', stderr: $(tail -3 "$TMP/err")"
    finish
fi
note "$json"
[[ $json == *'"verified":true'* ]] && ok "every page verified" || bad "no \"verified\":true in $json"
lm=$(num local_mem_bytes "$json")
((lm == 16 << 20)) && ok "local_mem_bytes = 16 MiB" || bad "local_mem_bytes '$lm', want $((16 << 20))"
wb=$(num evict_writebacks "$json") cd=$(num evict_clean_drops "$json")
((${wb:-0} > 0)) && ok "evict_writebacks $wb > 0" || bad "evict_writebacks '$wb': nothing written back"
((${cd:-0} > 0)) && ok "evict_clean_drops $cd > 0" || bad "evict_clean_drops '$cd': no clean drop"
for k in evict_write_GBps evict_read_GBps; do
    v=$(num "$k" "$json")
    awk -v v="${v:-0}" 'BEGIN { exit !(v > 0) }' && ok "$k $v > 0" || bad "$k '$v' not positive"
done

for args in "--size 64M --local-mem 64M" "--size 64M --local-mem 1M"; do
    # shellcheck disable=SC2086  # split on purpose
    msg=$(timeout 30 "$G" bench $args 2>&1 >/dev/null)
    rc=$?
    if ((rc == 2)) && grep -q -- '--local-mem' <<<"$msg"; then ok "bench $args: exit 2: $msg"; else
        bad "bench $args: exit $rc (want 2), '$msg'"
    fi
done
finish
