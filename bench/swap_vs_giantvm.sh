#!/usr/bin/env bash
# bench/swap_vs_giantvm.sh — a guest larger than its host memory allowance:
# kernel swap on zram vs. giantvm's pool, against all-local RAM, in one run.
#
#   bench/swap_vs_giantvm.sh [--json] [--mem MIB] [--mib MIB] [--seed S]
#                            [--passes P] [--runs N] [--timeout SEC]
#                            [--local-mem SIZE] [--cgroup-mem SIZE]
#                            [--zram-size SIZE]
#
# Boots the e2e guest (tests/e2e/guest.sh; default -m 1024, workload writes
# and verifies 512 MiB) three ways, one after the other, in each of --runs
# rounds (interleaved, so a change in machine load hits all three alike):
#   local  : plain qemu-system-x86_64, all guest RAM local.
#   zram   : plain QEMU moved into a memory cgroup limited to --cgroup-mem
#            (default 384M; cgroup v2 memory.max + memory.swap.max=max, or on
#            a v1 memory hierarchy memory.limit_in_bytes with memsw
#            unlimited), with swap on a zram device (--zram-size, default 2G,
#            lz4 else zstd else the kernel's default compressor) at priority
#            32767.  QEMU is moved by a wrapper:
#              sh -c 'echo $$ > CG/cgroup.procs; exec qemu-system-x86_64 ...'
#   giantvm: giantvm run --local-mem SIZE (default 128M) on a pool of two
#            loopback memory servers (giantvm memserver --listen 127.0.0.1:0),
#            started as dedicated memory nodes are run: --servers prealloc
#            (default) gives each --capacity <guest RAM> --prealloc, so
#            storing a page never waits for fresh memory; --servers lazy
#            starts them without, and every page they store first costs
#            the kernel a fresh, zeroed page (slow on VMs whose host
#            reclaims freed guest memory, see docs/BENCHMARKS.md).
# The cgroup, the zram swap (a hot-added /dev/zramN) and the servers are set
# up before the first boot and removed after the last one (swapoff, reset,
# hot_remove, rmdir), also on any error or signal.
# If the cgroup or the zram swap cannot be set up, the reason is printed and
# the exit status is 1 (no numbers are made up).  Needs root.
#
# Wall time = the whole QEMU (or giantvm run) process: boot + workload +
# poweroff, measured on the host.  With --runs N each way runs N times and the
# median is reported.  Every run must print verify=ok with the checksum the
# host computes (workload --expect), else the exit status is 1.
# Output: human-readable lines; with --json exactly one JSON object on stdout
#   {"local_s":..,"zram_s":..,"giantvm_s":..,"zram_over_local":..,
#    "giantvm_over_local":..,"giantvm_over_zram":..,  plus context:
#    "mem_mib","mib","runs","local_mem","cgroup_mem","zram_comp","cgroup","servers"}
# and the human lines on stderr.  Goal: giantvm_over_zram <= 1 (aim 0.75).
# Env: GVM_BUILD_DIR (default <repo>/build), GIANTVM_CACHE (see guest.sh).
# shellcheck disable=SC2015,SC2317  # A && B || die is intended; trap handlers
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# shellcheck source=../tests/e2e/guest.sh
. "$ROOT/tests/e2e/guest.sh"
# shellcheck source=../tests/e2e/harness.sh
. "$ROOT/tests/e2e/harness.sh" # stop_servers, stop_run
# shellcheck source=swap_lib.sh
. "$ROOT/bench/swap_lib.sh" # cg_up, zram_up, zram_down, cgroup_down
SWAPLIB_NAME=swap_vs_giantvm.sh

json=0 mem=1024 mib=512 seed=1 passes=1 runs=1 to=900
local_mem=128M cg_mem=384M zram_size=2G servers=prealloc
BUILD=${GVM_BUILD_DIR:-$ROOT/build}
while (($#)); do
    case $1 in
    --json) json=1 ;;
    --mem) mem=${2:?}; shift ;;
    --mib) mib=${2:?}; shift ;;
    --seed) seed=${2:?}; shift ;;
    --passes) passes=${2:?}; shift ;;
    --runs) runs=${2:?}; shift ;;
    --timeout) to=${2:?}; shift ;;
    --local-mem) local_mem=${2:?}; shift ;;
    --cgroup-mem) cg_mem=${2:?}; shift ;;
    --zram-size) zram_size=${2:?}; shift ;;
    --servers) servers=${2:?}; shift ;;
    -h | --help) sed -n '2,44p' "$0"; exit 0 ;;
    *) echo "swap_vs_giantvm.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for v in mem mib passes runs to; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) ||
        { echo "swap_vs_giantvm.sh: --${v/to/timeout} wants a positive integer, got '${!v}'" >&2; exit 2; }
done
[[ $servers == prealloc || $servers == lazy ]] ||
    { echo "swap_vs_giantvm.sh: --servers wants prealloc or lazy, got '$servers'" >&2; exit 2; }
[[ $seed =~ ^[0-9]+$ ]] || { echo "swap_vs_giantvm.sh: --seed wants an integer, got '$seed'" >&2; exit 2; }

say() { if ((json)); then echo "$*" >&2; else echo "$*"; fi; }
die() { echo "swap_vs_giantvm.sh: $*" >&2; exit 1; }

((EUID == 0)) || die "needs root (memory cgroup, zram swap)"
for b in mkswap swapon swapoff; do
    command -v "$b" >/dev/null || die "$b not found (util-linux / fdisk)"
done

TMP=$(mktemp -d /tmp/gvm-swapbench.XXXXXX) || die "mktemp failed"
SERVER_PIDS=() RUN_PID='' CG='' ZDEV='' ZN='' Z_HOTADDED=0 Z_SWAPON=0 SWAPFILE='' SF_SWAPON=0

cleanup() {
    stop_run
    stop_servers
    zram_down
    cgroup_down
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'cleanup; trap - INT; kill -INT $$' INT
trap 'cleanup; trap - TERM; kill -TERM $$' TERM

# ---------------------------------------------------------------- prepare
gvm_guest_prepare 2>"$TMP/prepare.log" || { tail -n 20 "$TMP/prepare.log" >&2; die "gvm_guest_prepare failed"; }
expect=$("$GVM_WORKLOAD" --expect "$mib" "$seed") || die "workload --expect failed"
[[ -x $BUILD/giantvm && -r $BUILD/libgiantvm-preload.so ]] ||
    die "$BUILD/giantvm or libgiantvm-preload.so missing (run 'make -j2' first)"
# a snapshot, so a concurrent `make` cannot swap the binary mid-run
mkdir -p "$TMP/bin" && cp "$BUILD/giantvm" "$BUILD/libgiantvm-preload.so" "$TMP/bin/" ||
    die "cannot copy the build to $TMP/bin"
G=$TMP/bin/giantvm
"$G" --help >/dev/null 2>&1 || die "$G does not run"

# ---------------------------------------------------------------- runs
log=$TMP/boot.log
# run LABEL PREFIX... : one boot; sets R_S, R_MS; returns 1 on a wrong result.
run() {
    local label=$1 args t0 rc
    shift
    mapfile -t args < <(gvm_guest_qemu_args "$mem" "$mib" "gvm.seed=$seed" "gvm.passes=$passes")
    t0=$(date +%s.%N)
    timeout -k 10 "$to" "$@" qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1 &
    RUN_PID=$!
    wait "$RUN_PID"
    rc=$?
    RUN_PID=''
    R_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
    local res
    res=$(tr -d '\r' <"$log" | grep -m1 '^GIANTVM-RESULT ' || true)
    R_MS=$(sed -n 's/.* elapsed_ms=\([0-9]*\).*/\1/p' <<<"$res")
    if ((rc != 0)) || [[ $res != *" checksum=$expect verify=ok "* ]]; then
        echo "swap_vs_giantvm.sh: $label run failed (rc=$rc, ${R_S}s; want checksum=$expect verify=ok): ${res:-no GIANTVM-RESULT line}" >&2
        tr -d '\r' <"$log" | grep -v '^[[:space:]]*$' | tail -n 20 | sed 's/^/  | /' >&2
        return 1
    fi
    say "  $label: ${R_S}s wall (guest workload ${R_MS} ms) ${res}"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

say "guest: -m $mem, workload $mib MiB seed $seed passes $passes, runs $runs, kernel $GVM_KERNEL_PKG; expected checksum $expect"

# ---------------------------------------------------------------- set up
# Everything is set up before the first boot (a failure costs no run), and
# the three ways are interleaved per round, so a change in the machine's
# load during the bench hits all three alike.
cg_up >"$TMP/why" || die "cannot set up the memory cgroup: $(cat "$TMP/why")"
zram_up >"$TMP/why" 2>&1 || die "cannot set up zram swap: $(cat "$TMP/why")"
say "zram : $CG_DESC; swap $ZDEV $zram_size comp=$Z_COMP prio 32767"
bench_pool_up "$mem" "$servers" >"$TMP/why" 2>&1 || die "memservers did not start: $(cat "$TMP/why")"
say "giantvm: --local-mem $local_mem, pool of 2 loopback memservers $(paste -sd' ' "$TMP/pool.conf") (servers: $servers${SRV_OPTS[*]:+, ${SRV_OPTS[*]}})"

# ---------------------------------------------------------------- rounds
L_S=() L_MS=() Z_S=() Z_MS=() V_S=() V_MS=()
for ((round = 1; round <= runs; round++)); do
    ((runs > 1)) && say "round $round of $runs"
    # (a) all local
    run local || exit 1
    L_S+=("$R_S") L_MS+=("$R_MS")
    # (b) plain QEMU in the memory cgroup, swapping to zram
    # shellcheck disable=SC2016  # $$ and "$@" are the wrapper shell's
    run zram sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" || exit 1
    Z_S+=("$R_S") Z_MS+=("$R_MS")
    zstat=$(cat "/sys/block/zram$ZN/mm_stat" 2>/dev/null)
    [[ -n $zstat ]] && say "    zram mm_stat: mem_used_max $(awk '{ printf "%.1f MiB", $5 / 1048576 }' <<<"$zstat") (cumulative)"
    # (c) giantvm --local-mem on the loopback pool
    run giantvm env "GIANTVM_STATS_OUT=$TMP/stats.json" "$G" run --pool "$TMP/pool.conf" \
        --local-mem "$local_mem" --vm-id "swapbench-$$-$round" -- || exit 1
    V_S+=("$R_S") V_MS+=("$R_MS")
    if [[ -s $TMP/stats.json ]]; then
        st=$(sed 's/"per_node".*//' "$TMP/stats.json")
        say "    engine:$(for k in faults pages_fetched evictions writebacks clean_drops budget_pages fault_p50_us fault_p99_us errors; do
            printf ' %s=%s' "$k" "$(sed -n "s/.*\"$k\":\([0-9.]*\).*/\1/p" <<<"$st")"
        done)"
    fi
done
if [[ $CG_KIND == v2 ]]; then
    cgpeak=$(cat "$CG/memory.peak" 2>/dev/null || echo '?')
    cgev="swap events: $(awk '$1 == "swap" { print $2 }' "$CG/memory.events" 2>/dev/null)"
else
    cgpeak=$(cat "$CG/memory.max_usage_in_bytes" 2>/dev/null || echo '?')
    cgev="limit hits (failcnt): $(cat "$CG/memory.failcnt" 2>/dev/null)"
fi
say "zram cgroup peak usage $(awk -v b="$cgpeak" 'BEGIN { if (b ~ /^[0-9]+$/) printf "%.1f MiB", b / 1048576; else print b }') ($cgev)"
stop_servers
zram_down
cgroup_down
local_s=$(median "${L_S[@]}") local_ms=$(median "${L_MS[@]}")
zram_s=$(median "${Z_S[@]}") zram_ms=$(median "${Z_MS[@]}")
giantvm_s=$(median "${V_S[@]}") giantvm_ms=$(median "${V_MS[@]}")

# ---------------------------------------------------------------- results
r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
zl=$(r "$zram_s" "$local_s") gl=$(r "$giantvm_s" "$local_s") gz=$(r "$giantvm_s" "$zram_s")
say "wall (median of $runs): local ${local_s}s, zram ${zram_s}s, giantvm ${giantvm_s}s" \
    "(guest workload: ${local_ms} / ${zram_ms} / ${giantvm_ms} ms)"
say "ratios: zram/local $zl, giantvm/local $gl, giantvm/zram $gz"
say "goal giantvm/zram <= 1.0 (aim 0.75): $(awk -v g="$gz" 'BEGIN { print (g <= 0.75) ? "met, and the 0.75 aim" : (g <= 1.0) ? "met (not the 0.75 aim)" : "NOT met" }')"
if ((json)); then
    printf '{"local_s":%s,"zram_s":%s,"giantvm_s":%s,"zram_over_local":%s,"giantvm_over_local":%s,"giantvm_over_zram":%s,' \
        "$local_s" "$zram_s" "$giantvm_s" "$zl" "$gl" "$gz"
    printf '"mem_mib":%s,"mib":%s,"runs":%s,"local_mem":"%s","cgroup_mem":"%s","zram_comp":"%s","cgroup":"%s","servers":"%s"}\n' \
        "$mem" "$mib" "$runs" "$local_mem" "$cg_mem" "$Z_COMP" "$CG_KIND" "$servers"
fi
exit 0
