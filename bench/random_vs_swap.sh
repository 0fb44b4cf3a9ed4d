#!/usr/bin/env bash
# bench/random_vs_swap.sh: guests whose memory accesses are random, with a
# working set larger than the host memory they may use: local RAM vs swap on
# zram vs a swap file on the local disk vs giantvm --local-mem, at equal
# local memory, every result verified.
#
#   bench/random_vs_swap.sh [--json] [--runs N] [--workloads LIST] [--ways LIST] [--seal on|off]
#                           [--local-mem MIB] [--cgroup-mem MIB|auto] [--mem MIB]
#                           [--cgroup-floor MIB] [--oom-retries N] [--thp]
#                           [--ops K] [--seed S] [--redis-keys K]
#                           [--redis-value BYTES] [--redis-ops Q]
#                           [--swapfile PATH] [--zram-size SIZE]
#                           [--servers prealloc|lazy] [--timeout SEC]
#                           [--pin-qemu CPULIST] [--prefetch N] [--balloon]
#
# Workloads (--workloads, comma separated; default u2x,u4x,zipf):
#   u2x   workload --rand uniform over 2 x local-mem MiB: a sequential fill,
#         --ops (default 200000) timed read-modify-writes of random 8-byte
#         words, a pass that checks every word (tests/e2e/workload.c)
#   u4x   the same over 4 x local-mem MiB
#   zipf  workload --rand zipf (s = 0.99, ranks scattered over the words)
#         over 2 x local-mem MiB
#   redis Debian's redis-server in the guest (tests/e2e/guest.sh
#         gvm_guest_prepare_redis) on a Unix socket: workload --redis loads
#         --redis-keys keys of --redis-value bytes (default: keys filling
#         ~2 x local-mem of redis heap, 4000 bytes), does --redis-ops
#         (default 30000) random requests (uniform; 90% GET checked against
#         what was SET, 10% SET), then DBSIZE and a GET of every key
# The guest is the e2e guest (Debian kernel, busybox, -smp 1, TCG) with
# -m --mem MiB (default 4 x local-mem + 128) for every workload and way.
#
# Ways (--ways, default local,giantvm,zram,disk, run in that order), each a
# fresh boot:
#   local   plain QEMU, all guest RAM local
#   giantvm giantvm run --local-mem local-mem on two loopback memory servers
#           (replicas 2, prefetch default or --prefetch N, giantvm run's
#           largest window; --servers prealloc gives each
#           --capacity <mem> --prealloc)
#   zram    QEMU in a memory cgroup (see below), swap on a hot-added zram
#           device (lz4 else zstd) at priority 32767
#   disk    the same cgroup, swap on a swap file on the root file system
#           (--swapfile, default /var/tmp/gvm-random-swap.PID, sized --mem;
#           fallocate, else dd) at priority 32767
# QEMU runs with transparent huge pages off (prctl PR_SET_THP_DISABLE, by a
# wrapper compiled at start) in every way: QEMU madvises guest RAM
# MADV_HUGEPAGE, and in a v1 memory cgroup here 2 MiB pages made swap boots
# get OOM-killed at random; --thp keeps the system's THP setting.
# The zram device and the swap file are each swapped on only for their own
# boot (never both); another active swap area is reported (other_swap in the
# JSON), since it would take part.  Everything is set up by the script and
# removed at the end, also on error or signal.
#
# --seal on|off (default off: the servers are on loopback) is giantvm run's
# --seal: sealed pages (AEGIS-256, docs/SECURITY.md) in the giantvm way.
#
# --balloon gives every way's guest QEMU's virtio-balloon with free page
# reporting (gvm.balloon=1, tests/e2e/guest.sh): memory the guest frees goes
# back to the host (giantvm: discarded, never fetched again; swap ways: no
# longer swapped). Each giantvm boot's line says how many pages were discarded.
#
# --pin-qemu CPULIST runs QEMU (and in the giantvm way `giantvm run` with the
# engine and evictor threads inside QEMU) under `taskset -c CPULIST`, in every
# way; the memory servers are not pinned.
#
# Equal local memory: a cgroup caps all of QEMU (guest RAM, QEMU's own heap
# with its copies of the kernel and initramfs, the TCG translation cache,
# page cache of the files it reads), --local-mem only guest RAM.  So with
# --cgroup-mem auto (the default) the cgroup's limit is QEMU's peak
# anonymous + shared-memory RSS (RssAnon + RssShmem: guest RAM and QEMU's
# own memory, not the mapped kernel file, whose page cache the cgroup does
# not hold once another boot has read it) in the giantvm boot of the same
# workload and round (which runs first), but not below --cgroup-floor MiB
# (default 192: at ~110 MiB a v1 memory cgroup here OOM-kills QEMU while it
# starts, copying the 64 MiB kernel into its heap and guest RAM); with
# a number it is that many MiB (needed when giantvm is not among --ways;
# default then local-mem + 192).  QEMU's peak RSS (VmHWM) and peak
# RssAnon + RssShmem (both sampled every 0.5 s from /proc/PID/status) are
# reported for every way, and the cgroup's limit and peak usage for zram
# and disk, and for zram the peak of its compressed store (mm_stat
# mem_used_max): local memory the swap way also uses, which the cgroup does
# not count (zram's allocations are not charged to a memory cgroup), so
# zram's whole local memory is the cgroup's peak plus that.  A swap boot the cgroup OOM-kills is reported
# (oom_killed_at_mib) and retried with the limit 32 MiB higher, at most
# --oom-retries times (default 3); after that the way has no numbers.
#
# Per way and workload (median of --runs interleaved rounds; peak RSS: max):
#   wall_s (the whole QEMU / giantvm run process: boot + workload + power
#   off), ops_per_s (the guest's timed random phase), ops_ms, peak_rss_mib,
#   peak_anon_shmem_mib,
#   cg_limit_mib, cg_peak_mib; swap ways: pswpin/pswpout (host /proc/vmstat deltas, pages);
#   zram: zram_store_peak_mib;
#   giantvm: faults, pages_fetched, readahead_pages, bytes_in, bytes_out,
#   evictions, writebacks, fault_p50_us/p99_us, poll_ms (the poller's CPU
#   time, docs/DESIGN.md) (GIANTVM_STATS_OUT, the stats
#   giantvm run prints at exit) and bytes_in_per_fault_page = bytes_in /
#   (faults x 4096).
# Every boot must print verify=ok (rand: with the checksum the host computes
# by `workload --expect-rand`; redis: no mismatch), else the exit status is 1.
# Output: human lines; with --json one JSON object on stdout
#   {"commit":..,"config":{..},"results":[{"workload":..,"way":..,..}],
#    "runs":[every boot]}  and the human lines on stderr.
# Defaults take about 10 minutes on a 2-core machine (local-mem 128, -m 640).
# The issue's 1 GiB figures: --local-mem 256 --mem 1152.
# Needs root.  Env: GVM_BUILD_DIR (default <repo>/build), GIANTVM_CACHE.
# shellcheck disable=SC2015,SC2317  # A && B || die is intended; trap handlers
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# shellcheck source=../tests/e2e/guest.sh
. "$ROOT/tests/e2e/guest.sh"
# shellcheck source=../tests/e2e/harness.sh
. "$ROOT/tests/e2e/harness.sh" # stop_servers, stop_run
# shellcheck source=swap_lib.sh
. "$ROOT/bench/swap_lib.sh"
SWAPLIB_NAME=random_vs_swap.sh

json=0 runs=1 workloads=u2x,u4x,zipf ways=local,giantvm,zram,disk
thp=0 budget=128 cg_arg=auto cg_floor=192 oom_retries=3 oom_step=32 mem='' ops=200000 seed=1 to=900
rkeys='' rvalue=4000 rops=30000 swapfile=/var/tmp/gvm-random-swap.$$
zram_size=2G servers=prealloc pin_qemu='' seal=off prefetch='' balloon=0
BUILD=${GVM_BUILD_DIR:-$ROOT/build}
while (($#)); do
    case $1 in
    --json) json=1 ;;
    --runs) runs=${2:?}; shift ;;
    --workloads) workloads=${2:?}; shift ;;
    --ways) ways=${2:?}; shift ;;
    --local-mem) budget=${2:?}; budget=${budget%[mM]}; shift ;;
    --cgroup-mem) cg_arg=${2:?}; cg_arg=${cg_arg%[mM]}; shift ;;
    --cgroup-floor) cg_floor=${2:?}; cg_floor=${cg_floor%[mM]}; shift ;;
    --oom-retries) oom_retries=${2:?}; shift ;;
    --thp) thp=1 ;;
    --mem) mem=${2:?}; shift ;;
    --ops) ops=${2:?}; shift ;;
    --seed) seed=${2:?}; shift ;;
    --redis-keys) rkeys=${2:?}; shift ;;
    --redis-value) rvalue=${2:?}; shift ;;
    --redis-ops) rops=${2:?}; shift ;;
    --swapfile) swapfile=${2:?}; shift ;;
    --zram-size) zram_size=${2:?}; shift ;;
    --servers) servers=${2:?}; shift ;;
    --pin-qemu) pin_qemu=${2:?}; shift ;;
    --seal) seal=${2:?}; shift ;;
    --prefetch) prefetch=${2:?}; shift ;;
    --balloon) balloon=1 ;;
    --timeout) to=${2:?}; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ && !/^# shellcheck/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "random_vs_swap.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "random_vs_swap.sh: $*" >&2; exit 1; }
usage_die() { echo "random_vs_swap.sh: $*" >&2; exit 2; }
[[ -n $mem ]] || mem=$((4 * budget + 128))
[[ -n $rkeys ]] || rkeys=$((2 * budget * 1048576 / (rvalue + 400)))
for v in runs budget mem ops to rkeys rvalue rops; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || usage_die "$v wants a positive integer, got '${!v}'"
done
[[ $cg_arg == auto || $cg_arg =~ ^[0-9]+$ ]] || usage_die "--cgroup-mem wants MiB or auto, got '$cg_arg'"
[[ $cg_floor =~ ^[0-9]+$ ]] || usage_die "--cgroup-floor wants MiB, got '$cg_floor'"
[[ $oom_retries =~ ^[0-9]+$ ]] || usage_die "--oom-retries wants a count, got '$oom_retries'"
[[ $seed =~ ^[0-9]+$ ]] || usage_die "--seed wants an integer, got '$seed'"
[[ $servers == prealloc || $servers == lazy ]] || usage_die "--servers wants prealloc or lazy"
[[ $seal == on || $seal == off ]] || usage_die "--seal wants on or off, got '$seal'"
[[ -z $prefetch || $prefetch =~ ^[0-9]+$ ]] || usage_die "--prefetch wants a page count, got '$prefetch'"
IFS=, read -ra WL <<<"$workloads"
IFS=, read -ra WAYS <<<"$ways"
[[ $cg_arg == auto && ,$ways, != *,giantvm,* ]] && cg_arg=$((budget + 192))
for w in "${WL[@]}"; do [[ $w =~ ^(u2x|u4x|zipf|redis)$ ]] || usage_die "unknown workload '$w'"; done
for w in "${WAYS[@]}"; do [[ $w =~ ^(local|zram|disk|giantvm)$ ]] || usage_die "unknown way '$w'"; done
declare -A GV_HWM=() # workload -> QEMU's peak RSS (MiB) in this round's giantvm boot
wl_mib() { case $1 in u2x | zipf) echo $((2 * budget)) ;; u4x) echo $((4 * budget)) ;; redis) echo 0 ;; esac; }
for w in "${WL[@]}"; do
    (($(wl_mib "$w") + 96 <= mem)) || usage_die "workload $w needs --mem >= $(($(wl_mib "$w") + 96))"
done

say() { if ((json)); then echo "$*" >&2; else echo "$*"; fi; }
((EUID == 0)) || die "needs root (memory cgroup, swap)"
for b in mkswap swapon swapoff pgrep; do
    command -v "$b" >/dev/null || die "$b not found"
done

TMP=$(mktemp -d /tmp/gvm-randbench.XXXXXX) || die "mktemp failed"
SERVER_PIDS=() RUN_PID='' SAMPLER='' CG='' ZDEV='' ZN='' Z_HOTADDED=0 Z_SWAPON=0 SWAPFILE='' SF_SWAPON=0
cleanup() {
    [[ -n $SAMPLER ]] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }
    SAMPLER=''
    stop_run
    stop_servers
    zram_down
    swapfile_rm
    cgroup_down
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'cleanup; trap - INT; kill -INT $$' INT
trap 'cleanup; trap - TERM; kill -TERM $$' TERM

# ---------------------------------------------------------------- prepare
gvm_guest_prepare 2>"$TMP/prepare.log" || { tail -n 20 "$TMP/prepare.log" >&2; die "gvm_guest_prepare failed"; }
BASE_INITRD=$GVM_INITRD
if [[ ,$workloads, == *,redis,* ]]; then
    gvm_guest_prepare_redis 2>>"$TMP/prepare.log" || { tail -n 20 "$TMP/prepare.log" >&2; die "gvm_guest_prepare_redis failed"; }
fi
declare -A EXPECT=()
for w in "${WL[@]}"; do
    case $w in
    u2x | u4x) EXPECT[$w]=$("$GVM_WORKLOAD" --expect-rand uniform "$(wl_mib "$w")" "$ops" "$seed") || die "--expect-rand failed" ;;
    zipf) EXPECT[$w]=$("$GVM_WORKLOAD" --expect-rand zipf "$(wl_mib "$w")" "$ops" "$seed") || die "--expect-rand failed" ;;
    esac
done
[[ -x $BUILD/giantvm && -r $BUILD/libgiantvm-preload.so ]] ||
    die "$BUILD/giantvm or libgiantvm-preload.so missing (run 'make -j2' first)"
snapshot_build || die "cannot copy the build to $TMP/bin"
NOTHP=$TMP/bin/nothp
if ((!thp)); then
    # prctl(PR_SET_THP_DISABLE) is inherited by QEMU across exec
    printf '%s\n' '#include <stdio.h>' '#include <sys/prctl.h>' '#include <unistd.h>' \
        'int main(int c, char **v) { if (c < 2 || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) { perror("nothp"); return 127; }' \
        '    execvp(v[1], v + 1); perror("nothp: exec"); return 127; }' >"$TMP/nothp.c"
    gcc -O2 -o "$NOTHP" "$TMP/nothp.c" 2>"$TMP/why" || die "cannot build the THP-off wrapper: $(cat "$TMP/why")"
fi
G=$TMP/bin/giantvm
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT+=-dirty

# ---------------------------------------------------------------- helpers
# qemu_of PID: the qemu-system-x86_64 process at or below PID
qemu_of() {
    local p=$1 c q
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == qemu-system-x86* ]] && { echo "$p"; return 0; }
    for c in $(pgrep -P "$p"); do
        q=$(qemu_of "$c") && { echo "$q"; return 0; }
    done
    return 1
}
# sampler PID FILE: every 0.5 s while PID lives, writes to FILE QEMU's VmHWM
# and the largest RssAnon + RssShmem seen so far (kB)
sampler() {
    local q='' h m=0
    while kill -0 "$1" 2>/dev/null; do
        [[ -n $q && -d /proc/$q ]] || q=$(qemu_of "$1") || q=''
        if [[ -n $q ]]; then
            h=$(awk -v m="$m" '$1 == "VmHWM:" { h = $2 } $1 == "RssAnon:" || $1 == "RssShmem:" { a += $2 }
                END { if (h != "") print h, (a > m) ? a : m }' "/proc/$q/status" 2>/dev/null)
            [[ -n $h ]] && { echo "$h" >"$2"; m=${h#* }; }
        fi
        sleep 0.5
    done
}
vmstat_swp() { awk '$1 == "pswpin" { i = $2 } $1 == "pswpout" { o = $2 } END { print i + 0, o + 0 }' /proc/vmstat; }
other_swap() { awk -v a="${ZDEV:-none}" -v b="${SWAPFILE:-none}" 'NR > 1 && $1 != a && $1 != b { printf "%s%s", s, $1; s = "," }' /proc/swaps; }
jnum() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2" | head -n1; }

RAW=$TMP/raw.tsv
: >"$RAW"
OTHER_SWAP=''
declare -A OOM_AT=() # "workload way" -> cgroup limits (MiB) at which QEMU was OOM-killed
# one WORKLOAD WAY ROUND [EXTRA_MIB]: boots once; appends a record to RAW;
# returns 1 on a wrong result or a failed set-up, 2 when the memory cgroup
# OOM-killed QEMU (zram, disk; the cgroup limit had EXTRA_MIB added).
one() {
    local wl=$1 way=$2 round=$3 extra=${4:-0} t0 rc args=() kargs=() prefix=() log=$TMP/boot.log res
    local sw0 sw1 cgp='' st='' os
    case $wl in
    u2x | u4x) kargs=("gvm.rand=uniform" "gvm.ops=$ops" "gvm.seed=$seed" "gvm.expect=${EXPECT[$wl]}") ;;
    zipf) kargs=("gvm.rand=zipf" "gvm.ops=$ops" "gvm.seed=$seed" "gvm.expect=${EXPECT[$wl]}") ;;
    redis) kargs=("gvm.job=redis" "gvm.keys=$rkeys" "gvm.value=$rvalue" "gvm.ops=$rops" "gvm.seed=$seed" "gvm.dist=uniform") ;;
    esac
    GVM_INITRD=$BASE_INITRD
    [[ $wl == redis ]] && GVM_INITRD=$GVM_INITRD_REDIS
    ((balloon)) && kargs+=(gvm.balloon=1)
    mapfile -t args < <(gvm_guest_qemu_args "$mem" "$(wl_mib "$wl")" "${kargs[@]}")
    ((${#args[@]})) || { echo "random_vs_swap.sh: gvm_guest_qemu_args failed" >&2; return 1; }
    case $way in
    local) ((thp)) || prefix=("$NOTHP") ;;
    zram | disk)
        CG_LIMIT=$cg_arg
        if [[ $cg_arg == auto ]]; then
            CG_LIMIT=${GV_HWM[$wl]:-}
            [[ -n $CG_LIMIT ]] || { echo "random_vs_swap.sh: --cgroup-mem auto: no giantvm boot of $wl before $way" >&2; return 1; }
            if ((CG_LIMIT < cg_floor)); then
                say "    (cgroup limit raised from giantvm's $CG_LIMIT MiB to the --cgroup-floor $cg_floor MiB)"
                CG_LIMIT=$cg_floor
            fi
        fi
        CG_LIMIT=$((CG_LIMIT + extra))
        cg_mem=$((CG_LIMIT * 1048576))
        cg_up >"$TMP/why" 2>&1 || { echo "random_vs_swap.sh: cgroup: $(cat "$TMP/why")" >&2; return 1; }
        if [[ $way == zram ]]; then
            zram_up >"$TMP/why" 2>&1 || { echo "random_vs_swap.sh: zram: $(cat "$TMP/why")" >&2; return 1; }
        else
            swapfile_on >"$TMP/why" 2>&1 || { echo "random_vs_swap.sh: swap file: $(cat "$TMP/why")" >&2; return 1; }
        fi
        os=$(other_swap)
        if [[ -n $os ]]; then
            echo "random_vs_swap.sh: WARNING: other swap areas are active ($os): they take part in the $way run" >&2
            [[ ,$OTHER_SWAP, == *,$os,* ]] || OTHER_SWAP+=${OTHER_SWAP:+,}$os
        fi
        # shellcheck disable=SC2016  # $0 and "$@" are the wrapper shell's
        prefix=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG")
        ((thp)) || prefix+=("$NOTHP")
        ;;
    giantvm)
        rm -f "$TMP/stats.json"
        ((thp)) || prefix=("$NOTHP")
        prefix+=(env "GIANTVM_STATS_OUT=$TMP/stats.json" "$G" run --pool "$TMP/pool.conf"
            --local-mem "${budget}M" --seal "$seal" ${prefetch:+--prefetch "$prefetch"} --vm-id "randbench-$$-$wl-$round" --)
        ;;
    esac
    sw0=$(vmstat_swp)
    rm -f "$TMP/hwm"
    t0=$(date +%s.%N)
    [[ -n $pin_qemu ]] && prefix=(taskset -c "$pin_qemu" "${prefix[@]}")
    timeout -k 10 "$to" "${prefix[@]}" qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1 &
    RUN_PID=$!
    sampler "$RUN_PID" "$TMP/hwm" &
    SAMPLER=$!
    wait "$RUN_PID"
    rc=$?
    RUN_PID=''
    local wall
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
    wait "$SAMPLER" 2>/dev/null
    SAMPLER=''
    sw1=$(vmstat_swp)
    local hwm anon
    read -r hwm anon <"$TMP/hwm" 2>/dev/null || hwm=0 anon=0
    local ooms=0 zmem=''
    if [[ $way == zram || $way == disk ]]; then
        cgp=$(cg_peak)
        if [[ ${CG_KIND:-} == v2 ]]; then
            ooms=$(awk '$1 == "oom_kill" { print $2 }' "$CG/memory.events" 2>/dev/null)
        else
            ooms=$(awk '$1 == "oom_kill" { print $2 }' "$CG/memory.oom_control" 2>/dev/null)
        fi
        # zram's compressed store is local memory too, but not charged to
        # the cgroup (zsmalloc allocations are not memcg-accounted): say how
        # much it held at its peak (mm_stat field 5, mem_used_max).
        [[ $way == zram && -r /sys/block/zram$ZN/mm_stat ]] &&
            zmem=$(awk '{ printf "%.0f", $5 / 1048576 }' "/sys/block/zram$ZN/mm_stat")
        if [[ $way == zram ]]; then zram_down; else swapfile_off; fi
        cgroup_down
    fi
    res=$(tr -d '\r' <"$log" | grep -m1 '^GIANTVM-RESULT ' || true)
    if ((${ooms:-0} > 0)) && [[ -z $res ]]; then
        say "  $wl/$way: OOM-killed by the memory cgroup at limit $CG_LIMIT MiB after ${wall}s (peak RSS $((hwm >> 10)) MiB)"
        OOM_AT["$wl $way"]+=${OOM_AT["$wl $way"]:+,}$CG_LIMIT
        return 2
    fi
    local okpat=' verify=ok '
    [[ $wl == redis ]] || okpat=" checksum=${EXPECT[$wl]} verify=ok "
    if ((rc != 0)) || [[ $res != *"$okpat"* ]]; then
        echo "random_vs_swap.sh: $wl/$way run failed (rc=$rc, ${wall}s; want$okpat): ${res:-no GIANTVM-RESULT line}" >&2
        tr -d '\r' <"$log" | grep -v '^[[:space:]]*$' | tail -n 20 | sed 's/^/  | /' >&2
        return 1
    fi
    local ops_s ops_ms pin pout
    ops_s=$(sed -n 's/.* ops_per_s=\([0-9]*\).*/\1/p' <<<"$res")
    ops_ms=$(sed -n 's/.* ops_ms=\([0-9]*\).*/\1/p' <<<"$res")
    pin=$(awk -v a="$sw0" -v b="$sw1" 'BEGIN { split(a, x, " "); split(b, y, " "); print y[1] - x[1] }')
    pout=$(awk -v a="$sw0" -v b="$sw1" 'BEGIN { split(a, x, " "); split(b, y, " "); print y[2] - x[2] }')
    [[ $cgp =~ ^[0-9]+$ ]] && cgp=$((cgp >> 20)) || cgp=''
    local f='' pf='' ra='' bi='' bo='' ev='' wb='' p50='' p99='' pm='' hr='' dp=''
    if [[ $way == giantvm ]]; then
        [[ -s $TMP/stats.json ]] || { echo "random_vs_swap.sh: $wl/giantvm: no GIANTVM_STATS_OUT stats" >&2; return 1; }
        st=$(sed 's/"per_node".*//' "$TMP/stats.json")
        f=$(jnum faults "$st") pf=$(jnum pages_fetched "$st") ra=$(jnum readahead_pages "$st")
        bi=$(jnum bytes_in "$st") bo=$(jnum bytes_out "$st") ev=$(jnum evictions "$st")
        wb=$(jnum writebacks "$st") p50=$(jnum fault_p50_us "$st") p99=$(jnum fault_p99_us "$st")
        pm=$(jnum poll_ms "$st") hr=$(jnum prefetch_hit_rate "$st") dp=$(jnum discarded_pages "$st")
    fi
    local cgl=''
    [[ $way == zram || $way == disk ]] && cgl=$CG_LIMIT || { pin='' pout=''; }
    [[ $way == giantvm ]] && GV_HWM[$wl]=$(((anon + 1023) >> 10))
    # empty fields are '-' (tab is whitespace to read, so empty ones would merge)
    local fields=("$wl" "$way" "$round" "$wall" "$ops_s" "$ops_ms" "$((hwm >> 10))" "$((anon >> 10))" "$cgl" "$cgp" "$pin" "$pout"
        "$f" "$pf" "$ra" "$bi" "$bo" "$ev" "$wb" "$p50" "$p99" "$pm" "$zmem") i
    for i in "${!fields[@]}"; do [[ -n ${fields[i]} ]] || fields[i]=-; done
    (IFS=$'\t'; echo "${fields[*]}") >>"$RAW"
    local line="  $wl/$way: ${wall}s wall, ${ops_s} ops/s (${ops_ms} ms), peak RSS $((hwm >> 10)) MiB (anon+shmem $((anon >> 10)) MiB)"
    [[ -n $cgp ]] && line+=", cgroup limit $cgl peak $cgp MiB, swap in/out $pin/$pout pages"
    [[ -n $zmem ]] && line+=", zram store peak $zmem MiB (outside the cgroup)"
    [[ -n $f ]] && line+=", $f faults, $pf pages fetched ($ra readahead), $(awk -v b="$bi" 'BEGIN { printf "%.1f", b / 1048576 }') MiB in, $(awk -v b="$bo" 'BEGIN { printf "%.1f", b / 1048576 }') MiB out, $ev evictions, fault p50 ${p50} us, probe hit rate $hr, $dp pages discarded, poller ${pm:-0} ms CPU"
    say "$line"
    say "    ${res#GIANTVM-RESULT }"
    [[ $wl == redis ]] && say "    $(tr -d '\r' <"$log" | grep '^GIANTVM-REDIS used_memory' | head -n1)"
    return 0
}

# ---------------------------------------------------------------- set up
say "random_vs_swap.sh at $COMMIT: guest -m $mem (TCG, -smp 1, $GVM_KERNEL_PKG), local memory $budget MiB" \
    "(cgroup: $([[ $cg_arg == auto ]] && echo "giantvm's peak RSS" || echo "$cg_arg MiB")), workloads $workloads, ways $ways, runs $runs"
say "rand: ops $ops seed $seed$(for w in "${WL[@]}"; do [[ $w == redis ]] || printf ', %s %s MiB expect %s' "$w" "$(wl_mib "$w")" "${EXPECT[$w]}"; done)"
[[ ,$workloads, == *,redis,* ]] && say "redis: $rkeys keys x $rvalue bytes, $rops random requests (90% GET / 10% SET), initramfs $GVM_INITRD_REDIS"
if [[ ,$ways, == *,disk,* ]]; then
    [[ $(stat -f -c %T "$(dirname "$swapfile")" 2>/dev/null) != tmpfs ]] || die "--swapfile $swapfile is on tmpfs, not a disk"
    swapfile_make "$swapfile" "$((mem + 256))M" >"$TMP/why" 2>&1 || die "swap file: $(cat "$TMP/why")"
    say "disk : swap file $SWAPFILE ($((mem + 256)) MiB) on $(findmnt -no SOURCE,FSTYPE -T "$SWAPFILE" | tr -s ' '), vm.page-cluster $(cat /proc/sys/vm/page-cluster)"
fi
if [[ ,$ways, == *,giantvm,* ]]; then
    bench_pool_up "$mem" "$servers" >"$TMP/why" 2>&1 || die "memservers did not start: $(cat "$TMP/why")"
    say "giantvm: --local-mem ${budget}M, pool of 2 loopback memservers $(paste -sd' ' "$TMP/pool.conf") (servers: $servers${SRV_OPTS[*]:+, ${SRV_OPTS[*]}})"
fi

# ---------------------------------------------------------------- rounds
for ((round = 1; round <= runs; round++)); do
    ((runs > 1)) && say "round $round of $runs"
    for wl in "${WL[@]}"; do
        for way in "${WAYS[@]}"; do
            extra=0
            while :; do
                one "$wl" "$way" "$round" "$extra"
                case $? in
                0) break ;;
                2) ((extra < oom_retries * oom_step)) || { say "  $wl/$way: given up after $oom_retries OOM retries"; break; }
                   extra=$((extra + oom_step)) ;;
                *) exit 1 ;;
                esac
            done
        done
    done
done
stop_servers
swapfile_rm

# ---------------------------------------------------------------- results
# agg: one line per (workload, way): medians of the numbers, max of peak RSS
agg() {
    awk -F'\t' '
    BEGIN { OFMT = "%.3f" }
    function med(k, n,   a, i, j, t) {
        n = split(v[k], a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        if (n == 0 || a[1] == "") return ""
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        key = $1 "\t" $2
        if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
        for (c = 4; c <= 23; c++) if ($c != "-") v[key, c] = v[key, c] (v[key, c] == "" ? "" : " ") $c
        if ($7 + 0 > mx[key, 7]) mx[key, 7] = $7 + 0
        if ($8 + 0 > mx[key, 8]) mx[key, 8] = $8 + 0
    }
    END {
        for (i = 1; i <= nk; i++) {
            k = order[i]
            printf "%s", k
            for (c = 4; c <= 23; c++) { m = (c == 7 || c == 8) ? mx[k, c] : med(k SUBSEP c); printf "\t%s", (m == "") ? "-" : m }
            printf "\n"
        }
    }' "$RAW"
}
AGG=$TMP/agg.tsv
agg >"$AGG"
local_wall() { awk -F'\t' -v w="$1" -v y="$2" '$1 == w && $2 == y { print $3 }' "$AGG"; }
say ""
say "median of $runs: workload way wall ops/s peak_RSS peak_anon+shmem [cgroup limit/peak, swap in/out pages] [giantvm: faults, pages fetched, MiB in, bytes_in/(faults*4096)]"
undash() { local v; for v in "$@"; do [[ ${!v} == - ]] && printf -v "$v" ''; done; }
F_AGG=(wl way wall ops_s ops_ms hwm anon cgl cgp pin pout f pf ra bi bo ev wb p50 p99 pm zmem)
while IFS=$'\t' read -r "${F_AGG[@]}"; do
    undash "${F_AGG[@]}"
    l=$(printf '  %-5s %-7s %8.1f s %9s ops/s %5s MiB RSS %5s MiB anon+shmem' "$wl" "$way" "$wall" "$ops_s" "$hwm" "$anon")
    [[ -n $cgp ]] && l+=" cgroup $cgl/$cgp MiB limit/peak, swap in/out $pin/$pout"
    [[ -n $zmem ]] && l+=", zram store $zmem MiB"
    [[ -n $f ]] && l+=$(awk -v f="$f" -v pf="$pf" -v bi="$bi" 'BEGIN { printf ", %d faults, %d pages, %.1f MiB in, %.1f x", f, pf, bi / 1048576, (f > 0) ? bi / (f * 4096) : 0 }')
    for other in zram disk; do
        ow=$(local_wall "$wl" "$other")
        [[ $way == giantvm && -n $ow ]] && l+=$(awk -v a="$wall" -v b="$ow" -v o="$other" 'BEGIN { printf ", %.2fx %s", a / b, o }')
    done
    [[ -n ${OOM_AT["$wl $way"]:-} ]] && l+=" (OOM-killed at ${OOM_AT["$wl $way"]} MiB first)"
    say "$l"
done <"$AGG"
for k in "${!OOM_AT[@]}"; do
    grep -q "^${k/ /$'\t'}"$'\t' "$AGG" || say "  ${k/ / } OOM-killed at ${OOM_AT[$k]} MiB: no result"
done
if ((json)); then
    num() { [[ -n $1 ]] && echo "$1" || echo null; }
    {
        printf '{"commit":"%s","config":{"mem_mib":%s,"local_mem_mib":%s,"cgroup_mem":"%s","ops":%s,"seed":%s,"runs":%s,' \
            "$COMMIT" "$mem" "$budget" "$cg_arg" "$ops" "$seed" "$runs"
        printf '"redis_keys":%s,"redis_value":%s,"redis_ops":%s,"thp":%s,"servers":"%s","seal":"%s","prefetch":"%s","balloon":%s,"pin_qemu":"%s","kernel":"%s","cgroup":"%s","zram_comp":"%s","page_cluster":%s,"other_swap":"%s"},"results":[' \
            "$rkeys" "$rvalue" "$rops" "$( ((thp)) && echo true || echo false)" "$servers" "$seal" "${prefetch:-default}" "$( ((balloon)) && echo true || echo false)" "$pin_qemu" "$GVM_KERNEL_PKG" "${CG_KIND:-}" "${Z_COMP:-}" "$(cat /proc/sys/vm/page-cluster)" "$OTHER_SWAP"
        sep=''
        while IFS=$'\t' read -r "${F_AGG[@]}"; do
            undash "${F_AGG[@]}"
            printf '%s{"workload":"%s","way":"%s","mib":%s,"wall_s":%s,"ops_per_s":%s,"ops_ms":%s,"peak_rss_mib":%s,"peak_anon_shmem_mib":%s,"cg_limit_mib":%s,"cg_peak_mib":%s,"pswpin":%s,"pswpout":%s' \
                "$sep" "$wl" "$way" "$(wl_mib "$wl")" "$wall" "$(num "$ops_s")" "$(num "$ops_ms")" "$(num "$hwm")" "$(num "$anon")" "$(num "$cgl")" "$(num "$cgp")" "$(num "$pin")" "$(num "$pout")"
            printf ',"faults":%s,"pages_fetched":%s,"readahead_pages":%s,"bytes_in":%s,"bytes_out":%s,"evictions":%s,"writebacks":%s,"fault_p50_us":%s,"fault_p99_us":%s,"poll_ms":%s' \
                "$(num "$f")" "$(num "$pf")" "$(num "$ra")" "$(num "$bi")" "$(num "$bo")" "$(num "$ev")" "$(num "$wb")" "$(num "$p50")" "$(num "$p99")" "$(num "$pm")"
            [[ -n $zmem ]] && printf ',"zram_store_peak_mib":%s' "$zmem"
            if [[ -n $f ]]; then
                printf ',"bytes_in_per_fault_page":%s' "$(awk -v f="$f" -v b="$bi" 'BEGIN { printf "%.3f", (f > 0) ? b / (f * 4096) : 0 }')"
            fi
            for other in local zram disk; do
                ow=$(local_wall "$wl" "$other")
                [[ -n $ow && $way != "$other" ]] && printf ',"over_%s":%s' "$other" "$(awk -v a="$wall" -v b="$ow" 'BEGIN { printf "%.3f", a / b }')"
            done
            [[ -n ${OOM_AT["$wl $way"]:-} ]] && printf ',"oom_killed_at_mib":[%s]' "${OOM_AT["$wl $way"]}"
            printf '}'
            sep=,
        done <"$AGG"
        for k in "${!OOM_AT[@]}"; do
            grep -q "^${k/ /$'\t'}"$'\t' "$AGG" ||
                printf '%s{"workload":"%s","way":"%s","oom_killed_at_mib":[%s]}' "$sep" "${k% *}" "${k#* }" "${OOM_AT[$k]}"
        done
        printf '],"runs":['
        sep=''
        F_RAW=(wl way round wall ops_s ops_ms hwm anon cgl cgp pin pout f pf ra bi bo ev wb p50 p99 pm zmem)
        while IFS=$'\t' read -r "${F_RAW[@]}"; do
            undash "${F_RAW[@]}"
            printf '%s{"workload":"%s","way":"%s","round":%s,"wall_s":%s,"ops_per_s":%s,"ops_ms":%s,"peak_rss_mib":%s,"peak_anon_shmem_mib":%s,"cg_limit_mib":%s,"cg_peak_mib":%s,"faults":%s,"pages_fetched":%s,"bytes_in":%s}' \
                "$sep" "$wl" "$way" "$round" "$wall" "$(num "$ops_s")" "$(num "$ops_ms")" "$(num "$hwm")" "$(num "$anon")" "$(num "$cgl")" "$(num "$cgp")" "$(num "$f")" "$(num "$pf")" "$(num "$bi")"
            sep=,
        done <"$RAW"
        printf ']}\n'
    }
fi
exit 0
