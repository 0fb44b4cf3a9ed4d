#!/usr/bin/env bash
# tests/e2e/test_run_local_mem.sh — a VM larger than its local memory budget:
# `giantvm run --local-mem 128M` on a 1 GiB guest that writes and verifies
# 512 MiB, so the evictor must write dirty pages back to the pool and fetch
# them again.
#
#   1. Two `giantvm memserver --listen 127.0.0.1:0 --port-file F` (loopback:
#      no token), a pool file with both.
#   2. GIANTVM_STATS_OUT=JSON timeout 900 giantvm run --pool FILE
#        --local-mem 128M --vm-id lm-$$ -- qemu-system-x86_64
#        <gvm_guest_qemu_args 1024 512 gvm.seed=5>
#      must exit 0 with verify=ok and the checksum `workload --expect 512 5`
#      computes on the host; the final JSON must show evictions > 0,
#      writebacks > 0 and budget_pages == 32768.  While the guest runs,
#      `giantvm stat lm-$$ --json` must answer a JSON object with
#      "budget_pages".
#   3. Peak resident memory of the QEMU process (VmHWM in /proc/PID/status,
#      polled every 0.2 s; it is a kernel-kept peak, so the last value read
#      before QEMU exits is the peak): the same guest on plain local QEMU
#      gives the reference.  QEMU's own overhead is measured as the local
#      VmHWM minus the peak RSS of the guest-RAM mapping (the MEM-MiB rw
#      mapping in /proc/PID/smaps, also sampled every 0.2 s; the guest RAM the
#      workload and guest kernel touched).  Asserted:
#        pooled VmHWM <= budget + overhead + 64 MiB (margin)
#        pooled VmHWM <= local VmHWM - MIB/2   ("clearly below": at least
#                                               half the workload not resident)
#      and the same checksum on plain QEMU.
# Servers are stopped and temp files removed on every exit path.
#
# Env: GVM_TEST_TIMEOUT (default 900 s), GVM_BUILD_DIR (default <repo>/build),
#      GIANTVM_CACHE (see guest.sh), GVM_LM_MARGIN_MIB (default 64),
#      CI=true: a missing prerequisite fails instead of skipping.
# Needs `make` done first (build/giantvm, build/libgiantvm-preload.so); root
# the first time (gvm_guest_prepare installs packages) and for userfaultfd
# when vm.unprivileged_userfaultfd=0.
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2317  # ok() always succeeds; trap handlers
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh"

SEED=5 MEM=1024 MIB=512 NODES=2
BUDGET_MIB=128
BUDGET_PAGES=$((BUDGET_MIB * 256))
MARGIN_MIB=${GVM_LM_MARGIN_MIB:-64}
TIMEOUT=${GVM_TEST_TIMEOUT:-900}
BUILD=${GVM_BUILD_DIR:-$REPO/build}
VM_ID=lm-$$

# shellcheck source=harness.sh
. "$HERE/harness.sh"
mib_of_kb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' in $REPO first)"
    finish
fi

TMP=$(mktemp -d /tmp/gvm-e2e-localmem.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup # also stops a VM still running (interrupted test)

# Run a snapshot of the build, so a concurrent `make` cannot swap the binary
# under a running test (the preload library is looked up next to giantvm).
snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

# ---------------------------------------------------------------- prerequisites
gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64 not found"
[[ -r /proc/self/status ]] && grep -q '^VmHWM:' /proc/self/status || missing "/proc/PID/status has no VmHWM"
if ((EUID != 0)) && [[ $(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null) != 1 ]]; then
    missing "not root and vm.unprivileged_userfaultfd != 1"
fi
expect=$("$GVM_WORKLOAD" --expect "$MIB" "$SEED")
note "kernel: $GVM_KERNEL_PKG; guest -m $MEM, workload $MIB MiB seed $SEED: expected checksum $expect"

# ---------------------------------------------------------------- helpers

# children PID: direct children of PID, one per line.
children() {
    local f=/proc/$1/task/$1/children
    if [[ -r $f ]]; then
        tr ' ' '\n' <"$f" | grep -v '^$'
    else
        pgrep -P "$1"
    fi
}

# find_qemu ROOT: the first descendant of ROOT (or ROOT) whose comm is QEMU's
# (comm is cut to 15 chars: "qemu-system-x86").  Before its exec the forked
# child of giantvm run is still called "giantvm", so it is not taken.
find_qemu() {
    local queue=("$1") p c comm
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
        if [[ $comm == qemu-system-x86* ]]; then
            echo "$p"
            return 0
        fi
        for c in $(children "$p"); do queue+=("$c"); done
    done
    return 1
}

# guest_ram_rss_kb PID MEM_MIB: Rss (kB) of the writable, non-executable
# mapping(s) exactly MEM_MIB MiB large: QEMU's guest RAM.  (The TCG code
# buffer is a rwx mapping of about the same size; it is excluded.)
guest_ram_rss_kb() {
    awk -v want=$(($2 * 1024)) '
        /^[0-9a-f]+-[0-9a-f]+ / { perms = $2; next }
        /^Size:/ { size = $2; next }
        /^Rss:/ { if (size == want && perms ~ /^rw/ && perms !~ /x/) { rss += $2; n++ } }
        END { if (n) print rss; else print -1 }' "/proc/$1/smaps" 2>/dev/null
}

# boot_measured LABEL LOG STAT_VM PREFIX... : boots the guest under
# timeout TIMEOUT with PREFIX in front of qemu-system-x86_64, polls QEMU's
# VmHWM and its guest-RAM Rss every 0.2 s.  If STAT_VM is not "-",
# runs `giantvm stat STAT_VM --json` once after the VM reports it runs.
# Sets B_RC B_WALL B_RESULT B_HWM_KB B_GRSS_KB B_QPID B_STAT_RC B_STAT_OUT.
boot_measured() {
    local label=$1 log=$2 statvm=$3 args t0 q='' v g
    shift 3
    mapfile -t args < <(gvm_guest_qemu_args "$MEM" "$MIB" "gvm.seed=$SEED")
    B_HWM_KB=0 B_GRSS_KB=-1 B_QPID='' B_STAT_RC=- B_STAT_OUT='' B_RESULT=''
    t0=$(date +%s.%N)
    timeout -k 10 "$TIMEOUT" "$@" qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1 &
    RUN_PID=$!
    while kill -0 "$RUN_PID" 2>/dev/null; do
        if [[ -z $q ]] || [[ $(cat "/proc/$q/comm" 2>/dev/null) != qemu-system-x86* ]]; then
            q=$(find_qemu "$RUN_PID") || q=
            [[ -n $q ]] && B_QPID=$q
        fi
        if [[ -n $q ]]; then
            v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$q/status" 2>/dev/null)
            [[ -n $v ]] && ((v > B_HWM_KB)) && B_HWM_KB=$v
            g=$(guest_ram_rss_kb "$q" "$MEM")
            [[ -n $g ]] && ((g > B_GRSS_KB)) && B_GRSS_KB=$g
        fi
        if [[ $statvm != - && $B_STAT_RC == - ]] && grep -q "VM '$statvm' running" "$log" 2>/dev/null; then
            B_STAT_OUT=$(timeout 10 "$G" stat "$statvm" --json 2>&1)
            B_STAT_RC=$?
        fi
        sleep 0.2
    done
    wait "$RUN_PID"
    B_RC=$?
    RUN_PID=
    B_WALL=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    B_RESULT=$(tr -d '\r' <"$log" | grep -m1 '^GIANTVM-RESULT ' || true)
    note "$label: rc=$B_RC wall=${B_WALL}s qemu pid ${B_QPID:-?} VmHWM $(mib_of_kb "$B_HWM_KB") MiB," \
        "guest-RAM Rss peak $(mib_of_kb "$B_GRSS_KB") MiB: ${B_RESULT:-<no GIANTVM-RESULT line>}"
}

re='^GIANTVM-RESULT mib=([0-9]+) seed=([0-9]+) checksum=([0-9a-f]{16}) verify=([A-Za-z]+) '

# check_result LABEL: asserts B_RC == 0 and a verify=ok result with $expect.
check_result() {
    local label=$1 log=$2
    if ((B_RC == 0)); then ok "$label: exited 0 in ${B_WALL}s"; else
        bad "$label: exit status $B_RC (124 = timeout ${TIMEOUT}s); log tail:"
        show_tail "$log"
    fi
    if [[ $B_RESULT =~ $re ]]; then
        if [[ ${BASH_REMATCH[1]} == "$MIB" && ${BASH_REMATCH[2]} == "$SEED" && ${BASH_REMATCH[4]} == ok &&
            ${BASH_REMATCH[3]} == "$expect" ]]; then
            ok "$label: verify=ok, checksum ${BASH_REMATCH[3]} == workload --expect $MIB $SEED"
        else
            bad "$label: result '$B_RESULT' (want mib=$MIB seed=$SEED checksum=$expect verify=ok)"
        fi
    else
        bad "$label: no GIANTVM-RESULT line"
        ((B_RC == 0)) && show_tail "$log"
    fi
    if ((B_HWM_KB > 0)); then ok "$label: QEMU VmHWM measured ($(mib_of_kb "$B_HWM_KB") MiB)"; else
        bad "$label: QEMU's VmHWM never read (qemu pid '${B_QPID}')"
    fi
}

# jnum JSON KEY: the number after "KEY": (first occurrence), or empty.
jnum() { sed -n "s/.*\"$2\":\([0-9][0-9.]*\).*/\1/p" <<<"$1" | head -n1; }
# The top-level key: cut the per_node array off first.
jtop() { jnum "${1%%\"per_node\"*}" "$2"; }

# ---------------------------------------------------------------- servers
start_memservers "$NODES" || finish
ok "$NODES memservers on $(paste -sd' ' "$POOL")"

# ---------------------------------------------------------------- pooled run
T_START=$(date +%s)
PLOG=$TMP/pooled.log
STATS=$TMP/stats.json
boot_measured "pooled --local-mem ${BUDGET_MIB}M" "$PLOG" "$VM_ID" \
    env "GIANTVM_STATS_OUT=$STATS" "$G" run --pool "$POOL" --local-mem "${BUDGET_MIB}M" --vm-id "$VM_ID" --
check_result "giantvm run --local-mem ${BUDGET_MIB}M" "$PLOG"
P_HWM=$B_HWM_KB P_GRSS=$B_GRSS_KB P_WALL=$B_WALL
grep -F 'local memory budget' <(tr -d '\r' <"$PLOG") | sed 's/^/# /'
eng=$(tr -d '\r' <"$PLOG" | grep -m1 '^\[GiantVM\] engine: ')
[[ -n $eng ]] && note "${eng#\[GiantVM\] }"

# `giantvm stat` while the guest ran
if [[ $B_STAT_RC == - ]]; then
    bad "giantvm stat $VM_ID --json: never ran (no \"VM '$VM_ID' running\" line while QEMU ran)"
elif ((B_STAT_RC == 0)) && [[ $B_STAT_OUT == \{* && $B_STAT_OUT == *\} && $B_STAT_OUT == *'"budget_pages":'* ]]; then
    sb=$(jtop "$B_STAT_OUT" budget_pages)
    ok "giantvm stat $VM_ID --json while running: budget_pages=$sb resident_pages=$(jtop "$B_STAT_OUT" resident_pages)"
else
    bad "giantvm stat $VM_ID --json: rc=$B_STAT_RC, output: $(head -c 400 <<<"$B_STAT_OUT")"
fi

# final stats JSON
if [[ -s $STATS ]]; then
    js=$(cat "$STATS")
    ev=$(jtop "$js" evictions) wb=$(jtop "$js" writebacks) bp=$(jtop "$js" budget_pages)
    rp=$(jtop "$js" resident_pages) er=$(jtop "$js" errors) lost=$(jtop "$js" lost_pages)
    note "final stats: evictions=$ev writebacks=$wb clean_drops=$(jtop "$js" clean_drops) budget_pages=$bp" \
        "resident_pages=$rp errors=$er lost_pages=$lost"
    [[ -n $ev ]] && ((ev > 0)) && ok "evictions=$ev > 0" || bad "evictions '$ev', want > 0: $(head -c 600 "$STATS")"
    [[ -n $wb ]] && ((wb > 0)) && ok "writebacks=$wb > 0" || bad "writebacks '$wb', want > 0"
    [[ $bp == "$BUDGET_PAGES" ]] && ok "budget_pages=$bp" || bad "budget_pages '$bp', want $BUDGET_PAGES"
    [[ -n $rp ]] && ((rp <= BUDGET_PAGES)) && ok "resident_pages=$rp <= budget" ||
        bad "resident_pages '$rp' > budget $BUDGET_PAGES"
    [[ $er == 0 && $lost == 0 ]] && ok "errors=0 lost_pages=0" || bad "errors '$er', lost_pages '$lost' (want 0)"
else
    bad "GIANTVM_STATS_OUT=$STATS: no final engine JSON written"
fi

alive=0
for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
((alive == NODES)) && ok "both memservers still running after the VM" || bad "only $alive of $NODES memservers still running"
stop_servers

# ---------------------------------------------------------------- local run
LLOG=$TMP/local.log
boot_measured "plain QEMU (local RAM)" "$LLOG" -
check_result "plain QEMU (local RAM)" "$LLOG"
L_HWM=$B_HWM_KB L_GRSS=$B_GRSS_KB L_WALL=$B_WALL

# ---------------------------------------------------------------- memory
if ((P_HWM > 0 && L_HWM > 0)); then
    if ((L_GRSS > 0)); then
        touched=$L_GRSS
        how="guest-RAM mapping Rss"
    else
        # mapping not found in smaps: the workload's MiB plus ~96 MiB for the
        # guest kernel (guest.sh: MEM_MIB >= MIB + 96)
        touched=$(((MIB + 96) * 1024))
        how="workload + 96 MiB (guest-RAM mapping not found in smaps)"
    fi
    overhead=$((L_HWM - touched))
    ((overhead < 0)) && overhead=0
    limit=$(((BUDGET_MIB + MARGIN_MIB) * 1024 + overhead))
    below=$((L_HWM - MIB * 1024 / 2))
    note "memory: local VmHWM $(mib_of_kb "$L_HWM") MiB, guest RAM touched $(mib_of_kb "$touched") MiB ($how)" \
        "=> QEMU overhead $(mib_of_kb "$overhead") MiB"
    note "memory: pooled VmHWM $(mib_of_kb "$P_HWM") MiB (guest-RAM Rss peak $(mib_of_kb "$P_GRSS") MiB)," \
        "limit budget $BUDGET_MIB + overhead + $MARGIN_MIB = $(mib_of_kb "$limit") MiB;" \
        "pooled/local = $(awk -v a="$P_HWM" -v b="$L_HWM" 'BEGIN { printf "%.2f", a / b }')"
    ((P_HWM <= limit)) && ok "pooled VmHWM $(mib_of_kb "$P_HWM") MiB <= budget + overhead + $MARGIN_MIB MiB = $(mib_of_kb "$limit") MiB" ||
        bad "pooled VmHWM $(mib_of_kb "$P_HWM") MiB > budget + overhead + $MARGIN_MIB MiB = $(mib_of_kb "$limit") MiB"
    ((P_HWM <= below)) && ok "pooled VmHWM $(mib_of_kb "$P_HWM") MiB <= local VmHWM $(mib_of_kb "$L_HWM") MiB - $((MIB / 2)) MiB" ||
        bad "pooled VmHWM $(mib_of_kb "$P_HWM") MiB not clearly below local $(mib_of_kb "$L_HWM") MiB (want <= local - $((MIB / 2)) MiB)"
    if ((P_GRSS > 0)); then
        ((P_GRSS <= BUDGET_MIB * 1024)) && ok "pooled guest-RAM Rss peak $(mib_of_kb "$P_GRSS") MiB <= budget $BUDGET_MIB MiB (0.2 s samples)" ||
            bad "pooled guest-RAM Rss peak $(mib_of_kb "$P_GRSS") MiB > budget $BUDGET_MIB MiB"
    fi
else
    bad "memory: VmHWM not measured (pooled $P_HWM kB, local $L_HWM kB)"
fi
note "wall: pooled ${P_WALL}s, local ${L_WALL}s; test body $(($(date +%s) - T_START))s"
finish
