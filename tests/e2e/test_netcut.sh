#!/usr/bin/env bash
# tests/e2e/test_netcut.sh — network cuts under a running VM whose RAM is
# evicted to, and read back from, a pool of memory servers in network
# namespaces.  The guest writes and verifies 320 MiB three times
# (gvm.passes=3) inside a 96 MiB local budget, so pages go to the pool,
# come back, and are written again while the links go down.
#
#   1a. Link cut, R=2: 3 memservers, each in its own namespace, with a token
#       file; a pool file of the 3 addresses;
#         GIANTVM_STATS_OUT=JSON timeout giantvm run --pool F --token-file T
#           --replicas 2 --local-mem 96M --timeout-ms 500 --deadline-ms 20000
#           --vm-id cut-$$ -- qemu-system-x86_64
#           <gvm_guest_qemu_args 512 320 gvm.seed=9 gvm.passes=3>
#       in the background; once `giantvm stat cut-$$ --json` shows
#       "writebacks" > 0 (or after GVM_CUT_FALLBACK_S seconds), node 2's link
#       is cut (gvm_netns_cut 2) and stays cut.  Asserted: the cut came while
#       the workload still ran, exit 0, verify=ok, the checksum of
#       `workload --expect 320 9`, final stats with errors > 0 or
#       nodes_down >= 1 (the cut was noticed) and lost_pages == 0 (a replica
#       was always up).  Fault p50/p99 are printed.
#   1b. The same with node 2's link healed ~GVM_HEAL_AFTER_S (5) s after the
#       cut: exit 0, verify=ok, checksum; and when the run went on for at
#       least 10 s after the heal, "resynced_stripes" > 0 or
#       "under_replicated_stripes" == 0 in the final stats (the figures and
#       the engine's "is back" / "re-syncing" lines are printed either way).
#   2a. Every replica down: 2 memservers (R=2), --local-mem 96M
#       --deadline-ms 3000 --timeout-ms 300; after write-backs began BOTH
#       links are cut.  Asserted: giantvm run returns (timeout 120 s around
#       the run) within deadline + GVM_DOWN_MARGIN_S (45) s of the cut, with a
#       non-zero status, and its stderr has the engine's "could not be
#       fetched within 3000 ms from any replica: A, B" naming both nodes, and
#       "poisoned" or "stopping the VM".  The time from the cut to the exit
#       is printed.
#   2b. 2a with GIANTVM_UFFD_DISABLE=POISON (the 5.15 path): exit status 75,
#       the preload's "stopping the VM" and giantvm run's "the VM was
#       stopped" line.
#   2c. 2b with both links cut as soon as the
#       VM runs, before any write-back: the same outcome is required.
# Watchdog (every case): a guest kernel BUG/Oops/panic on the serial console
# (what corrupt guest memory looks like) or, after the cut, no new fault for
# GVM_STALL_S (30) s stops the run at once and FAILs the case with the
# evidence, instead of waiting for the timeout ("never a silent hang").
# Each case starts fresh memservers on its own port; links are healed first.
# QEMU, servers and namespaces are removed on every exit path.
#
# Env: GVM_BUILD_DIR (default <repo>/build), GIANTVM_CACHE (see guest.sh),
#      GVM_TEST_TIMEOUT (per run of cases 1a/1b, default 180 s),
#      GVM_CUT_FALLBACK_S (default 12), GVM_HEAL_AFTER_S (default 5),
#      GVM_DOWN_MARGIN_S (default 45), GVM_STALL_S (watchdog, default 30),
#      GVM_NETCUT_CASES (default "1a 1b 2a 2b 2c": which cases to run),
#      GVM_KEEP_TMP=1 (keep the temp dir with every log),
#      CI=true: a missing prerequisite fails instead of skipping.
# Needs `make` done first (build/giantvm, build/libgiantvm-preload.so) and root.
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2317  # ok() always succeeds; trap handlers
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=guest.sh
. "$HERE/guest.sh"
# shellcheck source=netns.sh
. "$HERE/netns.sh"

SEED=9 MEM=512 MIB=320 PASSES=3
BUDGET=96M
TIMEOUT=${GVM_TEST_TIMEOUT:-180}
DOWN_TIMEOUT=120
CUT_FALLBACK_S=${GVM_CUT_FALLBACK_S:-12}
HEAL_AFTER_S=${GVM_HEAL_AFTER_S:-5}
DOWN_MARGIN_S=${GVM_DOWN_MARGIN_S:-45}
DOWN_DEADLINE_MS=3000 DOWN_TIMEOUT_MS=300
BUILD=${GVM_BUILD_DIR:-$REPO/build}
CASES=" ${GVM_NETCUT_CASES:-1a 1b 2a 2b 2c} "
want() { [[ $CASES == *" $1 "* ]]; }

# shellcheck source=harness.sh
. "$HERE/harness.sh"
# printable: the guest console holds escape sequences (and maybe worse).
printable() { LC_ALL=C tr -d '\r' | LC_ALL=C tr -c '\11\12\40-\176' '.'; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' in $REPO first)"
    finish
fi

TMP=$(mktemp -d /tmp/gvm-e2e-netcut.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup

# Run a snapshot of the build, so a concurrent `make` cannot swap the binary
# under a running test (the preload library is looked up next to giantvm).
snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

# ---------------------------------------------------------------- prerequisites
((EUID == 0)) || missing "network namespaces need root"
gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64 not found"
gvm_netns_up 3 || missing "gvm_netns_up 3 failed"
trap_cleanup # after netns.sh's traps: stop QEMU and the servers first

expect=$("$GVM_WORKLOAD" --expect "$MIB" "$SEED")
note "kernel: $GVM_KERNEL_PKG; guest -m $MEM, workload $MIB MiB x $PASSES passes seed $SEED, budget $BUDGET: expected checksum $expect"

TOKEN=$TMP/token
make_token "$TOKEN"

# ---------------------------------------------------------------- helpers

# jnum JSON KEY: the first number after "KEY": (empty if none).
jnum() { grep -o "\"$2\":-\?[0-9][0-9.]*" <<<"$1" | head -n1 | cut -d: -f2; }
# jtop JSON KEY: the same, outside the per_node array.
jtop() { jnum "${1%%\"per_node\"*}" "$2"; }
# per_node JSON: "addr:state,errors=N,requests=N" per node, space-separated.
per_node() {
    local per obj out='' node st er rq
    per=$(sed -n 's/.*"per_node":\[\(.*\)\].*/\1/p' <<<"$1")
    while IFS= read -r obj; do
        [[ $obj =~ \"node\":\"([^\"]*)\" ]] || continue
        node=${BASH_REMATCH[1]} st='?' er='?' rq='?'
        [[ $obj =~ \"state\":\"([^\"]*)\" ]] && st=${BASH_REMATCH[1]}
        [[ $obj =~ \"errors\":([0-9]+) ]] && er=${BASH_REMATCH[1]}
        [[ $obj =~ \"requests\":([0-9]+) ]] && rq=${BASH_REMATCH[1]}
        out+=" $node:$st,errors=$er,requests=$rq"
    done <<<"${per//\},\{/$'}\n{'}"
    echo "${out# }"
}

# heal_all: every link up (a previous case may have left one cut).
heal_all() {
    local i
    for ((i = 1; i <= GVM_NETNS_N; i++)); do
        [[ $(cat "/sys/class/net/${GVM_NETNS_VETH_HOST[i]}/operstate" 2>/dev/null) == up ]] ||
            gvm_netns_heal "$i" || return 1
    done
}

# start_servers N PORT: fresh memservers in namespaces 1..N on PORT, the pool
# file $POOL.  Returns non-zero (with a FAIL line) if one does not come up.
start_servers() {
    stop_servers
    start_memservers "$1" netns "$2"
}

# A guest kernel that found its memory corrupt (or died): the serial console
# shows one of these, and the guest then usually sits there.
OOPS_RE='Kernel panic|kernel BUG at|BUG: |Oops|general protection fault|list_(add|del) corruption|Unable to handle'

# cut_run LABEL VMID RUN_TIMEOUT "CUT_NODES" HEAL_AFTER_S [VAR=VAL...] -- GIANTVM_RUN_OPTS...
#   Starts `timeout RUN_TIMEOUT env VARS GIANTVM_STATS_OUT=... giantvm run
#   OPTS --vm-id VMID -- qemu-system-x86_64 <guest>` in the background
#   (stdout -> $TMP/LABEL.out, stderr -> $TMP/LABEL.err), polls `giantvm stat
#   VMID --json` every ~0.5 s until "writebacks" > 0 (or CUT_FALLBACK_S s
#   after start; with CUT_ON_START set, as soon as giantvm run says the VM
#   runs), cuts the links of CUT_NODES, heals them HEAL_AFTER_S s
#   later when HEAL_AFTER_S > 0, and waits for the exit (checked every 0.1 s).
#   Watchdog, so a misbehaving run fails in seconds instead of at RUN_TIMEOUT:
#   a guest kernel BUG/Oops/panic on the console (OOPS_RE), or, after the
#   cut, no new fault for STALL_S seconds while the run lives: the run is
#   stopped (SIGTERM through timeout) and R_OOPS / R_STALL say why.
#   Sets: R_RC R_WALL R_CUT_WB (writebacks seen at the cut, or "fallback")
#   R_CUT_AT R_CUT_ALIVE (1: the run was running at the cut and had printed no
#   GIANTVM-RESULT) R_CUT_TO_EXIT R_HEAL_TO_EXIT (or "-") R_OUT R_ERR R_STATS
#   R_LAST_STAT (the last `stat --json` answer) R_OOPS R_STALL R_HEAL_AT
#   R_GIVEUP (seconds from the cut to the engine's first "could not be
#   fetched" line, seen within 0.1 s; empty if none while the run lived).
STALL_S=${GVM_STALL_S:-30}
cut_run() {
    local label=$1 vmid=$2 to=$3 cutnodes=$4 heal=$5 envs=() args t0 t_cut='' t_heal='' t_end s c wb
    local tick=0 t f last_f='' t_change='' el
    shift 5
    while (($#)) && [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    mapfile -t args < <(gvm_guest_qemu_args "$MEM" "$MIB" "gvm.seed=$SEED" "gvm.passes=$PASSES")
    R_OUT=$TMP/$label.out R_ERR=$TMP/$label.err R_STATS=$TMP/$label.stats.json
    R_OUT=${R_OUT// /_} R_ERR=${R_ERR// /_} R_STATS=${R_STATS// /_}
    R_RC='' R_WALL='' R_CUT_WB='' R_CUT_AT='' R_CUT_ALIVE=0 R_CUT_TO_EXIT='' R_HEAL_TO_EXIT=- R_LAST_STAT=''
    R_OOPS='' R_STALL='' R_HEAL_AT='' R_GIVEUP=''
    rm -f "$R_STATS"
    t0=$(now)
    timeout -k 10 "$to" env ${envs[@]+"${envs[@]}"} "GIANTVM_STATS_OUT=$R_STATS" \
        "$G" run "$@" --vm-id "$vmid" -- qemu-system-x86_64 "${args[@]}" \
        </dev/null >"$R_OUT" 2>"$R_ERR" &
    RUN_PID=$!
    while kill -0 "$RUN_PID" 2>/dev/null; do
        if [[ -n $t_cut && -z $R_GIVEUP ]] && grep -q 'could not be fetched within' "$R_ERR"; then
            R_GIVEUP=$(secs "$t_cut" "$(now)")
        fi
        if ((tick++ % 5)); then
            sleep 0.1
            continue
        fi
        t=$(now)
        s=$(timeout 5 "$G" stat "$vmid" --json 2>/dev/null)
        [[ $s == \{* ]] && R_LAST_STAT=$s
        if [[ -z $t_cut ]]; then
            # Phase 1: wait for write-backs, then cut.
            wb=$(jtop "$s" writebacks)
            if [[ -n ${CUT_ON_START:-} ]] && grep -q "^\[GiantVM\] VM '$vmid' running" "$R_ERR"; then
                R_CUT_WB=${wb:-0}
            elif [[ -z ${CUT_ON_START:-} && -n $wb ]] && ((wb > 0)); then
                R_CUT_WB=$wb
            elif (($(secs "$t0" "$t" | cut -d. -f1) >= CUT_FALLBACK_S)); then
                R_CUT_WB=fallback
            fi
            if [[ -n $R_CUT_WB ]]; then
                for c in $cutnodes; do gvm_netns_cut "$c"; done
                t_cut=$(now)
                t_change=$t_cut
                R_CUT_AT=$(secs "$t0" "$t_cut")
                kill -0 "$RUN_PID" 2>/dev/null && ! grep -aq '^GIANTVM-RESULT ' "$R_OUT" && R_CUT_ALIVE=1
            fi
        elif [[ -z $t_heal ]] && ((heal > 0)) && (($(secs "$t_cut" "$t" | cut -d. -f1) >= heal)); then
            # Phase 2: heal.
            for c in $cutnodes; do gvm_netns_heal "$c"; done
            t_heal=$(now)
            R_HEAL_AT=$(secs "$t0" "$t_heal")
        fi
        if grep -aqE "$OOPS_RE" "$R_OUT"; then
            sleep 3 # let the trace reach the console
            R_OOPS=$(printable <"$R_OUT" | grep -m1 -E "$OOPS_RE")
            R_WALL=$(secs "$t0" "$(now)")
            break
        fi
        if [[ -n $t_cut ]]; then
            f=$(jtop "$s" faults)
            if [[ -n $f && $f != "$last_f" ]]; then
                last_f=$f
                t_change=$t
            fi
            el=$(secs "$t_change" "$t")
            if ((${el%.*} >= STALL_S)); then
                R_STALL="no new fault for ${el}s (faults=${last_f:-?}; $(secs "$t_cut" "$t")s after the cut)"
                R_WALL=$(secs "$t0" "$t")
                break
            fi
        fi
    done
    if [[ -n $R_OOPS || -n $R_STALL ]]; then
        # stop_run waits for the exit; its status is of no interest then.
        stop_run
        R_RC=-1
        t_end=$(now)
    else
        wait "$RUN_PID"
        R_RC=$?
        t_end=$(now)
        RUN_PID=
        R_WALL=$(secs "$t0" "$t_end")
    fi
    [[ -n $t_cut ]] && R_CUT_TO_EXIT=$(secs "$t_cut" "$t_end")
    [[ -n $t_heal ]] && R_HEAL_TO_EXIT=$(secs "$t_heal" "$t_end")
    return 0
}

# check_watchdog LABEL: FAIL (with the evidence) when the watchdog stopped
# the run; returns non-zero then.
check_watchdog() {
    local label=$1
    if [[ -n $R_OOPS ]]; then
        bad "$label: the guest kernel crashed (memory corruption?)${R_CUT_AT:+ after the cut at ${R_CUT_AT}s}${R_HEAL_AT:+, healed at ${R_HEAL_AT}s}: '$R_OOPS'; run stopped at ${R_WALL}s. Console and engine log:"
        printable <"$R_OUT" | grep -v '^[[:space:]]*$' | grep -E -A12 "$OOPS_RE" | head -n 16 | sed 's/^/#   /'
        grep -E 'giantvm: (transport|engine)' "$R_ERR" | head -n 6 | sed 's/^/#   /'
        return 1
    fi
    if [[ -n $R_STALL ]]; then
        bad "$label: silent hang: $R_STALL; run stopped at ${R_WALL}s. Last stat: $(head -c 400 <<<"$R_LAST_STAT")"
        show_tail "$R_ERR" 10
        show_tail "$R_OUT" 10
        return 1
    fi
    return 0
}

# check_result LABEL: rc 0, one GIANTVM-RESULT with verify=ok and the checksum.
check_result() {
    local label=$1 res n re='^GIANTVM-RESULT mib=([0-9]+) seed=([0-9]+) checksum=([0-9a-f]{16}) verify=([A-Za-z]+) '
    check_watchdog "$label" || return 1
    if ((R_RC == 0)); then ok "$label: giantvm run exited 0 in ${R_WALL}s"; else
        bad "$label: exit status $R_RC (124 = timeout); stderr tail:"
        show_tail "$R_ERR"
        show_tail "$R_OUT" 8
    fi
    n=$(tr -d '\r' <"$R_OUT" | grep -ac '^GIANTVM-RESULT ')
    res=$(tr -d '\r' <"$R_OUT" | grep -a -m1 '^GIANTVM-RESULT ')
    if [[ $n == 1 && $res =~ $re ]]; then
        if [[ ${BASH_REMATCH[1]} == "$MIB" && ${BASH_REMATCH[2]} == "$SEED" && ${BASH_REMATCH[4]} == ok ]]; then
            ok "$label: mib=$MIB seed=$SEED verify=ok"
        else
            bad "$label: result '$res' (want mib=$MIB seed=$SEED verify=ok)"
        fi
        [[ ${BASH_REMATCH[3]} == "$expect" ]] && ok "$label: checksum ${BASH_REMATCH[3]} == workload --expect $MIB $SEED" ||
            bad "$label: checksum ${BASH_REMATCH[3]} != expected $expect"
    elif [[ $n == 0 ]]; then
        bad "$label: no GIANTVM-RESULT line (rc=$R_RC; with -no-reboot QEMU exits 0 when the guest resets, e.g. on a triple fault from corrupt page tables); console tail:"
        show_tail "$R_OUT" 6
    else
        bad "$label: $n GIANTVM-RESULT lines, first '$res'"
    fi
}

# check_cut_timing LABEL: the cut happened, while the workload still ran.
check_cut_timing() {
    local label=$1
    if [[ -z $R_CUT_AT ]]; then
        bad "$label: the run ended (rc=$R_RC) before the cut"
        return 1
    fi
    if [[ $R_CUT_WB == fallback ]]; then
        note "$label: no writebacks seen by \`giantvm stat\` within ${CUT_FALLBACK_S}s; cut anyway (last stat: $(head -c 300 <<<"$R_LAST_STAT"))"
    fi
    if ((R_CUT_ALIVE)); then
        ok "$label: link(s) cut at ${R_CUT_AT}s (writebacks=$R_CUT_WB), before the workload finished"
    else
        bad "$label: the cut at ${R_CUT_AT}s came after the workload had finished"
    fi
}

# ---------------------------------------------------------------- 1a: cut, stays cut
if want 1a; then
    start_servers 3 9901 || finish
    cut_run cut "cut-$$" "$TIMEOUT" 2 0 -- --pool "$POOL" --token-file "$TOKEN" --replicas 2 \
        --local-mem "$BUDGET" --timeout-ms 500 --deadline-ms 20000
    note "1a: rc=$R_RC wall=${R_WALL}s, cut of ${GVM_NETNS_IP[2]} at ${R_CUT_AT:-never}s, run went on ${R_CUT_TO_EXIT:-?}s after it"
    check_cut_timing "1a cut node 2"
    check_result "1a cut node 2"
    grep -F "${GVM_NETNS_IP[2]}:9901" "$R_ERR" | head -n 3 | sed 's/^/#   stderr: /'
    if [[ -s $R_STATS ]]; then
        js=$(cat "$R_STATS")
        er=$(jtop "$js" errors) nd=$(jtop "$js" nodes_down) lost=$(jtop "$js" lost_pages)
        note "1a final stats: fault p50 $(jtop "$js" fault_p50_us) us, p99 $(jtop "$js" fault_p99_us) us;" \
            "errors=$er nodes_down=$nd lost_pages=$lost writebacks=$(jtop "$js" writebacks)" \
            "evictions=$(jtop "$js" evictions) under_replicated_stripes=$(jtop "$js" under_replicated_stripes)" \
            "resynced_stripes=$(jtop "$js" resynced_stripes)"
        note "1a per_node: $(per_node "$js")"
        if [[ -n $er && -n $nd ]] && ((er > 0 || nd >= 1)); then
            ok "1a: the cut was noticed (errors=$er, nodes_down=$nd)"
        else
            bad "1a: final stats show errors=$er nodes_down=$nd (want errors > 0 or nodes_down >= 1)"
        fi
        [[ $lost == 0 ]] && ok "1a: lost_pages=0 (a replica was always up)" ||
            bad "1a: lost_pages=$lost with one of 3 nodes cut at R=2"
    else
        bad "1a: GIANTVM_STATS_OUT=$R_STATS: no final engine JSON written"
    fi
fi

# ---------------------------------------------------------------- 1b: cut, healed
if want 1b; then
    heal_all || { bad "1b: cannot heal the links"; finish; }
    start_servers 3 9902 || finish
    cut_run heal "cut-$$-heal" "$TIMEOUT" 2 "$HEAL_AFTER_S" -- --pool "$POOL" --token-file "$TOKEN" \
        --replicas 2 --local-mem "$BUDGET" --timeout-ms 500 --deadline-ms 20000
    note "1b: rc=$R_RC wall=${R_WALL}s, cut at ${R_CUT_AT:-never}s, healed ${HEAL_AFTER_S}s later, run went on ${R_HEAL_TO_EXIT}s after the heal"
    check_cut_timing "1b cut+heal node 2"
    check_result "1b cut+heal node 2"
    grep -E "is back|re-sync" "$R_ERR" | head -n 4 | sed 's/^/#   stderr: /'
    if [[ -s $R_STATS ]]; then
        js=$(cat "$R_STATS")
        rs=$(jtop "$js" resynced_stripes) ur=$(jtop "$js" under_replicated_stripes)
        note "1b final stats: fault p50 $(jtop "$js" fault_p50_us) us, p99 $(jtop "$js" fault_p99_us) us;" \
            "errors=$(jtop "$js" errors) nodes_down=$(jtop "$js" nodes_down) lost_pages=$(jtop "$js" lost_pages)" \
            "resynced_stripes=$rs under_replicated_stripes=$ur"
        note "1b per_node: $(per_node "$js")"
        if [[ $R_HEAL_TO_EXIT != - ]] && (($(cut -d. -f1 <<<"$R_HEAL_TO_EXIT") >= 10)); then
            if [[ -n $rs && -n $ur ]] && ((rs > 0 || ur == 0)); then
                ok "1b: re-sync after the heal (resynced_stripes=$rs, under_replicated_stripes=$ur)"
            else
                bad "1b: ${R_HEAL_TO_EXIT}s after the heal: resynced_stripes=$rs under_replicated_stripes=$ur (want > 0 / == 0)"
            fi
        else
            note "1b: run ended ${R_HEAL_TO_EXIT}s after the heal (< 10 s): re-sync not asserted"
        fi
    else
        bad "1b: GIANTVM_STATS_OUT=$R_STATS: no final engine JSON written"
    fi
fi

# ---------------------------------------------------------------- 2: every replica down
# down_case LABEL PORT VMID [VAR=VAL...]: 2 servers, both links cut after
# write-backs began, VAR=VAL... in giantvm run's environment.
down_case() {
    local label=$1 port=$2 vmid=$3 limit a b msg
    shift 3
    heal_all || { bad "$label: cannot heal the links"; return 1; }
    start_servers 2 "$port" || return 1
    a=${GVM_NETNS_IP[1]}:$port b=${GVM_NETNS_IP[2]}:$port
    cut_run "$label" "$vmid" "$DOWN_TIMEOUT" "1 2" 0 "$@" -- --pool "$POOL" --token-file "$TOKEN" \
        --replicas 2 --local-mem "$BUDGET" --timeout-ms "$DOWN_TIMEOUT_MS" --deadline-ms "$DOWN_DEADLINE_MS"
    note "$label: rc=$R_RC wall=${R_WALL}s, both links cut at ${R_CUT_AT:-never}s; engine gave up ${R_GIVEUP:-?}s and giantvm run exited ${R_CUT_TO_EXIT:-?}s after the cut (deadline ${DOWN_DEADLINE_MS} ms, timeout ${DOWN_TIMEOUT_MS} ms)"
    check_cut_timing "$label" || return 1
    check_watchdog "$label" || return 1
    limit=$((DOWN_DEADLINE_MS / 1000 + DOWN_MARGIN_S))
    if ((R_RC == 124 || R_RC == 137)); then
        bad "$label: giantvm run did not return within ${DOWN_TIMEOUT}s (rc=$R_RC: hang); stderr tail:"
        show_tail "$R_ERR"
    elif (($(cut -d. -f1 <<<"$R_CUT_TO_EXIT") > limit)); then
        bad "$label: giantvm run returned ${R_CUT_TO_EXIT}s after the cut (limit ${limit}s = deadline + ${DOWN_MARGIN_S}s)"
    else
        ok "$label: giantvm run returned ${R_CUT_TO_EXIT}s after the cut (deadline ${DOWN_DEADLINE_MS} ms, limit ${limit}s)"
    fi
    if ((R_RC != 0)); then ok "$label: non-zero exit status $R_RC"; else
        bad "$label: exit status 0 with every replica unreachable"
    fi
    msg=$(grep -m1 "could not be fetched within $DOWN_DEADLINE_MS ms from any replica: " "$R_ERR")
    if [[ -n $msg && $msg == *"$a"* && $msg == *"$b"* ]]; then
        ok "$label: stderr names the pages and both nodes: ${msg#giantvm: }"
    else
        bad "$label: no 'could not be fetched within $DOWN_DEADLINE_MS ms from any replica: ...$a...$b' line in stderr (got '${msg}'); stderr tail:"
        show_tail "$R_ERR"
    fi
    if grep -qE 'poisoned|stopping the VM' "$R_ERR"; then
        ok "$label: stderr: $(grep -m1 -E 'poisoned|stopping the VM' "$R_ERR" | sed 's/^giantvm: //')"
    else
        bad "$label: stderr has neither 'poisoned' nor 'stopping the VM'"
    fi
    grep -E '^giantvm run:' "$R_ERR" | head -n 2 | sed 's/^/#   stderr: /'
    return 0
}

if want 2a; then
    if down_case "2a all down" 9903 "down-$$" && grep -q 'features: .*POISON' "$R_ERR"; then
        # Under TCG, a poisoned page read by QEMU's vCPU thread kills QEMU.
        ((R_RC == 128 + 7)) && ok "2a: UFFDIO_POISON available: QEMU died of SIGBUS (rc=$R_RC)" ||
            bad "2a: the kernel has POISON; exit status $R_RC, want $((128 + 7)) (QEMU killed by SIGBUS)"
    fi
fi

# 2c: both links cut as soon as the VM runs,
# before any write-back: the guest's fresh pages fill the budget and no
# write-back can make room, yet the outcome must be the same as in 2b.
if want 2c; then
    CUT_ON_START=1
    if down_case "2c all down from the start, no POISON" 9905 "down-$$-start" GIANTVM_UFFD_DISABLE=POISON; then
        if ((R_RC == 75)); then ok "2c: exit status 75"; else bad "2c: exit status $R_RC, want 75 (VM stopped without POISON)"; fi
    fi
    CUT_ON_START=
fi

if want 2b; then
    if down_case "2b all down, no POISON" 9904 "down-$$-np" GIANTVM_UFFD_DISABLE=POISON; then
        if ((R_RC == 75)); then ok "2b: exit status 75"; else bad "2b: exit status $R_RC, want 75 (VM stopped without POISON)"; fi
        grep -q 'stopping the VM' "$R_ERR" && grep -q '^giantvm run: the VM was stopped' "$R_ERR" &&
            ok "2b: 'stopping the VM' and 'giantvm run: the VM was stopped'" ||
            bad "2b: want the preload's 'stopping the VM' and giantvm run's 'the VM was stopped' lines"
    fi
fi

stop_servers
finish
