#!/usr/bin/env bash
# tests/e2e/test_evicting_guest.sh — the evicting-guest test: a VM whose RAM
# lives in a pool of memory servers with only --local-mem of it resident, so
# the evictor writes dirty pages back to the pool and the engine fetches them
# again; the guest (tests/e2e/guest.sh) writes and verifies its workload.
# What differs from one scenario to the next is one row of EG_TABLE below;
# the boot, the result and stats checks and the cleanup exist once.
#
# A scenario, in order:
#   1. fresh memservers (all links healed first): "loopback N" on 127.0.0.1:0,
#      or "netns N +token" in namespaces 1..N of gvm_netns_up on the
#      scenario's own port with --token-file (the pool file has the N lines);
#   2. its pre-boot checks (token_file needs_token wrong_token);
#   3. GIANTVM_STATS_OUT=JSON timeout T env VARS giantvm run --pool F
#        [--token-file T] --local-mem L RUN_ARGS --vm-id eg-$$-NAME --
#        qemu-system-x86_64 <gvm_guest_qemu_args GUEST MIB gvm.seed=S [gvm.passes=P]>
#      in the background, watched every 0.1 s: with a cut, `giantvm stat
#      --json` is polled every ~0.5 s and the links of the cut nodes go down
#      once "writebacks" > 0 (@wb; or GVM_CUT_FALLBACK_S s after the start) or
#      as soon as the VM runs (@start), and come up again heal=S s later.
#      Watchdog: a guest kernel BUG/Oops/panic on the serial console, or,
#      after a cut, no new fault for GVM_STALL_S s, stops the run at once and
#      FAILs the scenario with the evidence ("never a silent hang").  With a
#      cut, the cut must have come while the workload still ran;
#   4. its post-boot checks, in the order of the table; `plain` stops the
#      servers and boots the same guest on plain QEMU (local RAM).
#
# Checks (each prints its own "ok"/"FAIL" lines, prefixed "NAME: "):
#   token_file   the token file has 32 hex chars and mode 600
#   needs_token  a memserver on a namespace address without --token-file is refused
#   wrong_token  giantvm run with a token the servers reject stops before the guest runs
#   result       exit 0; one GIANTVM-RESULT line with mib, seed, verify=ok; its
#                checksum is what `workload --expect MIB SEED` computes on the host
#   banner       "[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode. Log: FILE"
#   pool_line    "[GiantVM] pool: N nodes (--pool FILE), replicas 2"
#   ram_line     "guest RAM 'pc.ram': GUEST MiB in the pool"
#   engine_line  the engine's final line with faults > 0 and pages fetched > 0
#   per_node     the final JSON's per_node array: every node of the pool file, >= 2 served pages
#   stat_live    `giantvm stat VMID --json` (once, after "VM 'VMID' running") answers
#                a JSON object with "budget_pages"
#   evicted      final JSON: evictions > 0, writebacks > 0
#   budget       final JSON: budget_pages == --local-mem / 4 KiB, resident_pages <= it
#   no_errors    final JSON: errors == 0 and lost_pages == 0
#   sealed       final JSON: sealed true, seal_version_bytes > 0, pages_rejected == 0
#   noticed      final JSON: errors > 0 or nodes_down >= 1 (the cut was seen)
#   no_lost      final JSON: lost_pages == 0 (a replica was always up)
#   resync       resynced_stripes > 0 or under_replicated_stripes == 0; a FAIL
#                only when the run went on >= 10 s after the heal (else noted)
#   gave_up      every replica cut: giantvm run returns within --deadline-ms +
#                GVM_DOWN_MARGIN_S s of the cut, non-zero; stderr has "could not be
#                fetched within D ms from any replica: ..." naming every node, and
#                "poisoned" or "stopping the VM"
#   sigbus_if_poison  the engine has UFFDIO_POISON: QEMU died of SIGBUS (135)
#   exit75       exit status 75 (VM stopped, no POISON)
#   vm_stopped   the preload's "stopping the VM" and giantvm run's "the VM was stopped"
#   alive        every memserver still runs after the VM
#   plain        the same guest on plain QEMU: exit 0, verify=ok, the same checksum
#   memory       (after plain) QEMU's VmHWM, polled every 0.2 s in both runs, with
#                the peak Rss of the GUEST-MiB rw guest-RAM mapping (smaps):
#                  pooled VmHWM <= budget + QEMU overhead + GVM_LM_MARGIN_MIB
#                  (overhead = plain VmHWM - plain guest-RAM Rss peak),
#                  pooled VmHWM <= plain VmHWM - MIB/2, pooled guest-RAM peak <= budget
#
# Env: GVM_EVICT_SCENARIOS (default: every row, in table order), GVM_BUILD_DIR
#      (default <repo>/build), GIANTVM_CACHE (see guest.sh), GVM_TEST_TIMEOUT
#      (replaces the timeout of the rows whose guest must finish: not the
#      all-replicas-down ones), GVM_CUT_FALLBACK_S (12), GVM_DOWN_MARGIN_S (45),
#      GVM_STALL_S (30), GVM_LM_MARGIN_MIB (64), GVM_KEEP_TMP=1 (keep every log),
#      CI=true: a missing prerequisite fails instead of skipping.
# Needs `make` done first (build/giantvm, build/libgiantvm-preload.so); root for
# the namespaced scenarios (without it the loopback ones run, then SKIP).
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
# shellcheck source=harness.sh
. "$HERE/harness.sh"

# ---------------------------------------------------------------- scenarios
# name: ok lines are "NAME: ..."; servers: "loopback N" | "netns N +token";
# guest: -m MiB; workload: "MIB SEED PASSES"; local: --local-mem; timeout: s;
# run: VAR=VAL words go to giantvm run's environment, the rest are its options;
# cut: "-" | "NODES @wb|@start [heal=S]" (NODES: comma-separated indexes).
# Where the rows came from: pool = test_run_pool.sh, local_mem =
# test_run_local_mem.sh, cut cut_heal down down_at_start down_nopoison =
# test_netcut.sh cases 1a 1b 2a 2c 2b (in that order, as there).
EG_TABLE='
# name        | servers        | guest | workload | local | timeout | run                                                                          | cut          | checks
pool          | netns 3 +token | 512   | 256 7 1  | 160M  | 600     |                                                                              | -            | token_file needs_token wrong_token result banner pool_line ram_line engine_line per_node evicted budget no_errors alive plain
local_mem     | loopback 2     | 1024  | 512 5 1  | 128M  | 900     |                                                                              | -            | result stat_live evicted budget no_errors alive plain memory
sealed        | loopback 2     | 512   | 320 5 2  | 96M   | 300     | --seal on                                                                    | -            | result evicted budget no_errors sealed
cut           | netns 3 +token | 512   | 320 9 3  | 96M   | 180     | --replicas 2 --timeout-ms 500 --deadline-ms 20000                            | 2 @wb        | result noticed no_lost evicted budget
cut_heal      | netns 3 +token | 512   | 320 9 3  | 96M   | 180     | --replicas 2 --timeout-ms 500 --deadline-ms 20000                            | 2 @wb heal=5 | result resync evicted budget
down          | netns 2 +token | 512   | 320 9 3  | 96M   | 120     | --replicas 2 --timeout-ms 300 --deadline-ms 3000                             | 1,2 @wb      | gave_up sigbus_if_poison
down_at_start | netns 2 +token | 512   | 320 9 3  | 96M   | 120     | GIANTVM_UFFD_DISABLE=POISON --replicas 2 --timeout-ms 300 --deadline-ms 3000 | 1,2 @start   | gave_up exit75
down_nopoison | netns 2 +token | 512   | 320 9 3  | 96M   | 120     | GIANTVM_UFFD_DISABLE=POISON --replicas 2 --timeout-ms 300 --deadline-ms 3000 | 1,2 @wb      | gave_up exit75 vm_stopped
'
PRE_CHECKS=" token_file needs_token wrong_token "

CUT_FALLBACK_S=${GVM_CUT_FALLBACK_S:-12}
DOWN_MARGIN_S=${GVM_DOWN_MARGIN_S:-45}
STALL_S=${GVM_STALL_S:-30}
MARGIN_MIB=${GVM_LM_MARGIN_MIB:-64}
BUILD=${GVM_BUILD_DIR:-$REPO/build}
# A guest kernel that found its memory corrupt (or died): the serial console
# shows one of these, and the guest then usually sits there.
OOPS_RE='Kernel panic|kernel BUG at|BUG: |Oops|general protection fault|list_(add|del) corruption|Unable to handle'
RESULT_RE='^GIANTVM-RESULT mib=([0-9]+) seed=([0-9]+) checksum=([0-9a-f]{16}) verify=([A-Za-z]+) '

# ---------------------------------------------------------------- helpers
trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    echo "${s%"${s##*[![:space:]]}"}"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
mib_of_kb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# printable: the guest console holds escape sequences (and maybe worse).
printable() { LC_ALL=C tr -d '\r' | LC_ALL=C tr -c '\11\12\40-\176' '.'; }
# jnum JSON KEY: the first number after "KEY": (empty if none).
jnum() { grep -o "\"$2\":-\?[0-9][0-9.]*" <<<"$1" | head -n1 | cut -d: -f2; }
# jtop JSON KEY: the same, outside the per_node array.
jtop() { jnum "${1%%\"per_node\"*}" "$2"; }
# per_node_objs JSON: the objects of the per_node array, one a line.
per_node_objs() {
    local per
    per=$(sed -n 's/.*"per_node":\[\(.*\)\].*/\1/p' <<<"$1")
    [[ -n $per ]] && echo "${per//\},\{/$'}\n{'}"
}
# per_node_desc JSON: "addr:state,errors=N,requests=N,pages_in=N" per node.
per_node_desc() {
    local obj out='' node st er rq pin
    while IFS= read -r obj; do
        [[ $obj =~ \"node\":\"([^\"]*)\" ]] || continue
        node=${BASH_REMATCH[1]} st='?' er='?' rq='?' pin='?'
        [[ $obj =~ \"state\":\"([^\"]*)\" ]] && st=${BASH_REMATCH[1]}
        [[ $obj =~ \"errors\":([0-9]+) ]] && er=${BASH_REMATCH[1]}
        [[ $obj =~ \"requests\":([0-9]+) ]] && rq=${BASH_REMATCH[1]}
        [[ $obj =~ \"pages_in\":([0-9]+) ]] && pin=${BASH_REMATCH[1]}
        out+=" $node:$st,errors=$er,requests=$rq,pages_in=$pin"
    done < <(per_node_objs "$1")
    echo "${out# }"
}
has_check() { [[ " ${S_CHECKS[*]} " == *" $1 "* ]]; }

# children PID: direct children of PID, one per line.
children() {
    local f=/proc/$1/task/$1/children
    if [[ -r $f ]]; then tr ' ' '\n' <"$f" | grep -v '^$'; else pgrep -P "$1"; fi
}
# find_qemu ROOT: the first descendant of ROOT (or ROOT) whose comm is QEMU's
# (cut to 15 chars: "qemu-system-x86"); giantvm run's forked child is still
# "giantvm" before its exec, so it is not taken.
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
# guest_ram_rss_kb PID MEM_MIB: Rss (kB) of the rw, non-executable mapping(s)
# exactly MEM_MIB MiB large: QEMU's guest RAM (the TCG code buffer, rwx and
# about as large, is excluded); -1 if none.
guest_ram_rss_kb() {
    awk -v want=$(($2 * 1024)) '
        /^[0-9a-f]+-[0-9a-f]+ / { perms = $2; next }
        /^Size:/ { size = $2; next }
        /^Rss:/ { if (size == want && perms ~ /^rw/ && perms !~ /x/) { rss += $2; n++ } }
        END { if (n) print rss; else print -1 }' "/proc/$1/smaps" 2>/dev/null
}

# heal_all: every link up (a previous scenario may have left one cut).
heal_all() {
    local i
    for ((i = 1; i <= ${GVM_NETNS_N:-0}; i++)); do
        [[ $(cat "/sys/class/net/${GVM_NETNS_VETH_HOST[i]}/operstate" 2>/dev/null) == up ]] ||
            gvm_netns_heal "$i" || return 1
    done
}

# ---------------------------------------------------------------- the table
# load_row LINE: sets S_NAME S_KIND (loopback|netns) S_N S_TOKEN (0|1) S_MEM
# S_MIB S_SEED S_PASSES S_LOCAL S_BUDGET_MIB S_TIMEOUT S_ENV[] S_ARGS[]
# S_CUT_NODES S_CUT_WHEN (wb|start) S_HEAL S_DEADLINE_MS S_CHECKS[].
load_row() {
    local f w srv cut
    IFS='|' read -r -a f <<<"$1"
    ((${#f[@]} == 9)) || { echo "table row with ${#f[@]} columns, want 9: $1" >&2; return 1; }
    S_NAME=$(trim "${f[0]}")
    read -r -a srv <<<"${f[1]}"
    S_KIND=${srv[0]} S_N=${srv[1]:-0} S_TOKEN=0
    [[ ${srv[2]:-} == +token ]] && S_TOKEN=1
    [[ $S_KIND == loopback || ($S_KIND == netns && $S_TOKEN == 1) ]] && [[ $S_N =~ ^[1-9]$ ]] ||
        { echo "$S_NAME: servers '${f[1]}': want 'loopback N' or 'netns N +token'" >&2; return 1; }
    S_MEM=$(trim "${f[2]}")
    read -r S_MIB S_SEED S_PASSES <<<"${f[3]}"
    S_LOCAL=$(trim "${f[4]}")
    case $S_LOCAL in
    *M) S_BUDGET_MIB=${S_LOCAL%M} ;;
    *G) S_BUDGET_MIB=$((${S_LOCAL%G} * 1024)) ;;
    *) echo "$S_NAME: --local-mem '$S_LOCAL': want NM or NG" >&2; return 1 ;;
    esac
    S_TIMEOUT=$(trim "${f[5]}")
    S_ENV=() S_ARGS=() S_DEADLINE_MS=
    for w in ${f[6]}; do
        if ((${#S_ARGS[@]} == 0)) && [[ $w =~ ^[A-Z_][A-Z0-9_]*= ]]; then S_ENV+=("$w"); else S_ARGS+=("$w"); fi
    done
    for ((w = 0; w + 1 < ${#S_ARGS[@]}; w++)); do
        [[ ${S_ARGS[w]} == --deadline-ms ]] && S_DEADLINE_MS=${S_ARGS[w + 1]}
    done
    read -r -a cut <<<"${f[7]}"
    S_CUT_NODES='' S_CUT_WHEN='' S_HEAL=0
    if [[ ${cut[0]:-} != - ]]; then
        S_CUT_NODES=${cut[0]//,/ } S_CUT_WHEN=${cut[1]#@}
        [[ ${cut[2]:-} == heal=* ]] && S_HEAL=${cut[2]#heal=}
    fi
    read -r -a S_CHECKS <<<"${f[8]}"
    # rows whose guest must finish take GVM_TEST_TIMEOUT
    has_check result && S_TIMEOUT=${GVM_TEST_TIMEOUT:-$S_TIMEOUT}
    return 0
}

# ---------------------------------------------------------------- the boot
# eg_boot MODE (pooled | plain): boots the scenario's guest, under giantvm run
# against $POOL or on plain QEMU, in the background, and watches it every
# 0.1 s (see the top of the file: cut/heal, watchdog; QEMU's VmHWM and
# guest-RAM Rss every 0.2 s with the memory check; one `giantvm stat` with
# stat_live).  Sets R_RC (-1: stopped by the watchdog) R_WALL R_OUT (serial
# console and giantvm's stdout) R_ERR (giantvm's messages: its log, --log, when
# pooled; QEMU's stderr, $R_ERR.stderr, has only the errors that end the run;
# plain: stderr) R_STATS (final JSON) R_HWM_KB
# R_GRSS_KB R_QPID R_STAT_RC ("-": never ran) R_STAT_OUT R_LAST_STAT
# R_CUT_WB (writebacks seen at the cut, or "fallback") R_CUT_AT R_CUT_ALIVE
# (1: running, no GIANTVM-RESULT yet at the cut) R_CUT_TO_EXIT R_HEAL_AT
# R_HEAL_TO_EXIT ("-" if none) R_GIVEUP (seconds from the cut to the engine's
# first "could not be fetched" line) R_OOPS R_STALL.
eg_boot() {
    local mode=$1 args=() kargs cmd=() vmid=eg-$$-$S_NAME measure=0 stat=0 cutting=0
    local t0 t t_cut='' t_heal='' t_end tick=0 q='' v g s src wb c f last_f='' t_change='' el
    kargs=("gvm.seed=$S_SEED")
    ((S_PASSES > 1)) && kargs+=("gvm.passes=$S_PASSES")
    mapfile -t args < <(gvm_guest_qemu_args "$S_MEM" "$S_MIB" "${kargs[@]}")
    R_OUT=$TMP/$S_NAME.$mode.out R_ERR=$TMP/$S_NAME.$mode.err R_STATS=$TMP/$S_NAME.$mode.stats.json
    R_RC='' R_WALL='' R_HWM_KB=0 R_GRSS_KB=-1 R_QPID='' R_STAT_RC=- R_STAT_OUT='' R_LAST_STAT=''
    R_CUT_WB='' R_CUT_AT='' R_CUT_ALIVE=0 R_CUT_TO_EXIT='' R_HEAL_AT='' R_HEAL_TO_EXIT=- R_GIVEUP=''
    R_OOPS='' R_STALL=''
    rm -f "$R_STATS"
    has_check memory && measure=1
    if [[ $mode == pooled ]]; then
        has_check stat_live && stat=1
        [[ -n $S_CUT_NODES ]] && cutting=1
        cmd=(env ${S_ENV[@]+"${S_ENV[@]}"} "GIANTVM_STATS_OUT=$R_STATS" "$G" run --pool "$POOL")
        ((S_TOKEN)) && cmd+=(--token-file "$TOKEN")
        cmd+=(--local-mem "$S_LOCAL" ${S_ARGS[@]+"${S_ARGS[@]}"} --vm-id "$vmid" --log "$R_ERR" --)
    fi
    rm -f "$R_ERR"
    : >"$R_ERR"
    t0=$(now)
    timeout -k 10 "$S_TIMEOUT" ${cmd[@]+"${cmd[@]}"} qemu-system-x86_64 "${args[@]}" \
        </dev/null >"$R_OUT" 2>"$R_ERR${cmd[*]:+.stderr}" &
    RUN_PID=$!
    while kill -0 "$RUN_PID" 2>/dev/null; do
        tick=$((tick + 1))
        if [[ -n $t_cut && -z $R_GIVEUP ]] && grep -q 'could not be fetched within' "$R_ERR"; then
            R_GIVEUP=$(secs "$t_cut" "$(now)")
        fi
        if ((measure && tick % 2 == 1)); then
            if [[ -z $q ]] || [[ $(cat "/proc/$q/comm" 2>/dev/null) != qemu-system-x86* ]]; then
                q=$(find_qemu "$RUN_PID") || q=
                [[ -n $q ]] && R_QPID=$q
            fi
            if [[ -n $q ]]; then
                v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$q/status" 2>/dev/null)
                [[ -n $v ]] && ((v > R_HWM_KB)) && R_HWM_KB=$v
                g=$(guest_ram_rss_kb "$q" "$S_MEM")
                [[ -n $g ]] && ((g > R_GRSS_KB)) && R_GRSS_KB=$g
            fi
        fi
        if ((tick % 5 == 1)); then
            t=$(now)
            s=
            if ((cutting)) || { ((stat)) && [[ $R_STAT_RC == - ]] && grep -q "VM '$vmid' running" "$R_ERR"; }; then
                s=$(timeout 5 "$G" stat "$vmid" --json 2>&1)
                src=$?
                [[ $s == \{* ]] && R_LAST_STAT=$s
                if ((stat)) && [[ $R_STAT_RC == - ]] && grep -q "VM '$vmid' running" "$R_ERR"; then
                    R_STAT_RC=$src R_STAT_OUT=$s
                fi
            fi
            if ((cutting)) && [[ -z $t_cut ]]; then
                # wait for write-backs (or the VM to run), then cut
                wb=$(jtop "$s" writebacks)
                if [[ $S_CUT_WHEN == start ]] && grep -q "^\[GiantVM\] VM '$vmid' running" "$R_ERR"; then
                    R_CUT_WB=${wb:-0}
                elif [[ $S_CUT_WHEN == wb && -n $wb ]] && ((wb > 0)); then
                    R_CUT_WB=$wb
                elif (($(secs "$t0" "$t" | cut -d. -f1) >= CUT_FALLBACK_S)); then
                    R_CUT_WB=fallback
                fi
                if [[ -n $R_CUT_WB ]]; then
                    for c in $S_CUT_NODES; do gvm_netns_cut "$c"; done
                    t_cut=$(now)
                    t_change=$t_cut
                    R_CUT_AT=$(secs "$t0" "$t_cut")
                    kill -0 "$RUN_PID" 2>/dev/null && ! grep -aq '^GIANTVM-RESULT ' "$R_OUT" && R_CUT_ALIVE=1
                fi
            elif ((cutting)) && [[ -z $t_heal ]] && ((S_HEAL > 0)) && (($(secs "$t_cut" "$t" | cut -d. -f1) >= S_HEAL)); then
                for c in $S_CUT_NODES; do gvm_netns_heal "$c"; done
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
        fi
        sleep 0.1
    done
    if [[ -n $R_OOPS || -n $R_STALL ]]; then
        stop_run # waits for the exit; its status is of no interest then
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

# eg_log: the run's stdout and stderr, CRs dropped (giantvm's own lines are
# on both: the banner and the pool line on stdout, the rest on stderr).
eg_log() { { cat "$R_OUT"; echo; cat "$R_ERR"; } | tr -d '\r'; }
# (giantvm run's stderr, $R_ERR.stderr, holds only what is also in its log)

# eg_watchdog: FAIL (with the evidence) when the watchdog stopped the run;
# returns non-zero then.
eg_watchdog() {
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

# eg_cut_timing: the cut happened, while the workload still ran.
eg_cut_timing() {
    if [[ -z $R_CUT_AT ]]; then
        bad "$S_NAME: the run ended (rc=$R_RC) before the cut"
        return 1
    fi
    if [[ $R_CUT_WB == fallback ]]; then
        note "$S_NAME: no writebacks seen by \`giantvm stat\` within ${CUT_FALLBACK_S}s; cut anyway (last stat: $(head -c 300 <<<"$R_LAST_STAT"))"
    fi
    if ((R_CUT_ALIVE)); then
        ok "$S_NAME: link(s) of node(s) ${S_CUT_NODES// /,} cut at ${R_CUT_AT}s (writebacks=$R_CUT_WB), before the workload finished"
    else
        bad "$S_NAME: the cut at ${R_CUT_AT}s came after the workload had finished"
    fi
}

# eg_verify LABEL: rc 0, one GIANTVM-RESULT line with mib, seed, verify=ok,
# and the checksum $expect (and, if given, SAME: the pooled run's).  Sets R_SUM.
eg_verify() {
    local label=$1 same=${2:-} n res
    R_SUM=
    if ((R_RC == 0)); then ok "$label: exited 0 in ${R_WALL}s"; else
        bad "$label: exit status $R_RC (124 = timeout ${S_TIMEOUT}s); stderr and console tails:"
        show_tail "$R_ERR"
        show_tail "$R_OUT" 8
    fi
    n=$(tr -d '\r' <"$R_OUT" | grep -ac '^GIANTVM-RESULT ')
    res=$(tr -d '\r' <"$R_OUT" | grep -a -m1 '^GIANTVM-RESULT ')
    if [[ $n == 1 && $res =~ $RESULT_RE ]]; then
        R_SUM=${BASH_REMATCH[3]}
        if [[ ${BASH_REMATCH[1]} == "$S_MIB" && ${BASH_REMATCH[2]} == "$S_SEED" && ${BASH_REMATCH[4]} == ok ]]; then
            ok "$label: mib=$S_MIB seed=$S_SEED verify=ok"
        else
            bad "$label: result '$res' (want mib=$S_MIB seed=$S_SEED verify=ok)"
        fi
        if [[ $R_SUM == "$expect" && (-z $same || $R_SUM == "$same") ]]; then
            ok "$label: checksum $R_SUM == workload --expect $S_MIB $S_SEED${same:+ == the pooled run}"
        else
            bad "$label: checksum $R_SUM, expected $expect${same:+, pooled run $same}"
        fi
    elif [[ $n == 0 ]]; then
        bad "$label: no GIANTVM-RESULT line (rc=$R_RC; with -no-reboot QEMU exits 0 when the guest resets, e.g. on a triple fault from corrupt page tables); console tail:"
        show_tail "$R_OUT" 6
    else
        bad "$label: $n GIANTVM-RESULT lines, first '$res'"
    fi
}

# eg_stats: JS = the pooled run's final JSON; one FAIL per scenario if missing.
eg_stats() {
    [[ -n $JS ]] && return 0
    [[ -s $P_STATS ]] && JS=$(cat "$P_STATS") && [[ -n $JS ]] && return 0
    if [[ -z $JS_MISSING ]]; then
        bad "$S_NAME: GIANTVM_STATS_OUT=$P_STATS: no final engine JSON written"
        JS_MISSING=1
    fi
    return 1
}

# eg_notes: what the pooled run did (not asserted).
eg_notes() {
    local js a c
    note "$S_NAME: rc=$R_RC wall=${R_WALL}s${R_CUT_AT:+, node(s) ${S_CUT_NODES// /,} cut at ${R_CUT_AT}s}${R_HEAL_AT:+, healed at ${R_HEAL_AT}s}${R_CUT_TO_EXIT:+, exit ${R_CUT_TO_EXIT}s after the cut}${R_GIVEUP:+ (engine gave up ${R_GIVEUP}s after it)}${R_QPID:+, QEMU VmHWM $(mib_of_kb "$R_HWM_KB") MiB, guest-RAM Rss peak $(mib_of_kb "$R_GRSS_KB") MiB}: $(tr -d '\r' <"$R_OUT" | grep -a -m1 '^GIANTVM-RESULT ' || echo '<no GIANTVM-RESULT line>')"
    eg_log | grep -m1 -F 'local memory budget' | sed 's/^/# /'
    eg_log | grep -m1 '^\[GiantVM\] engine: ' | sed 's/^\[GiantVM\] /# /'
    # the engine's words about the cut nodes, "is back", re-sync, giantvm run's verdict
    {
        for c in $S_CUT_NODES; do
            a=${GVM_NETNS_IP[c]}:$PORT
            grep -F "$a" "$R_ERR" | head -n 2
        done
        grep -E 'is back|re-sync|^giantvm run:' "$R_ERR" | head -n 4
    } | awk '!seen[$0]++' | sed 's/^/#   stderr: /'
    if [[ -s $R_STATS ]]; then
        js=$(cat "$R_STATS")
        note "$S_NAME final stats: fault p50 $(jtop "$js" fault_p50_us) us, p99 $(jtop "$js" fault_p99_us) us;" \
            "evictions=$(jtop "$js" evictions) writebacks=$(jtop "$js" writebacks) clean_drops=$(jtop "$js" clean_drops)" \
            "budget_pages=$(jtop "$js" budget_pages) resident_pages=$(jtop "$js" resident_pages)" \
            "errors=$(jtop "$js" errors) nodes_down=$(jtop "$js" nodes_down) lost_pages=$(jtop "$js" lost_pages)" \
            "under_replicated_stripes=$(jtop "$js" under_replicated_stripes) resynced_stripes=$(jtop "$js" resynced_stripes)"
        note "$S_NAME per_node: $(per_node_desc "$js")"
    fi
}

# ---------------------------------------------------------------- checks
# chk_NAME: one check of the table; L is "NAME" of the scenario.  The pooled
# run's R_* are also in P_* (P_RC P_OUT P_ERR P_STATS P_SUM P_HWM_KB P_GRSS_KB).

chk_token_file() {
    local t mode
    t=$(cat "$TOKEN") mode=$(stat -c %a "$TOKEN")
    if [[ $t =~ ^[0-9a-f]{32}$ && $mode == 600 ]]; then ok "$L: token file: 32 hex chars, mode $mode"; else
        bad "$L: token file: $(wc -c <"$TOKEN") bytes, mode $mode (want 32 hex chars, 600)"
    fi
}

chk_needs_token() {
    local out rc
    out=$(timeout 10 ip netns exec "${GVM_NETNS[1]}" "$G" memserver --listen "${GVM_NETNS_IP[1]}:$((PORT - 1))" 2>&1)
    rc=$?
    if ((rc != 0 && rc != 124)) && [[ $out == *token* ]]; then
        ok "$L: memserver refuses ${GVM_NETNS_IP[1]} without --token-file (rc=$rc)"
    else
        bad "$L: memserver without token: rc=$rc, output: $out"
    fi
}

# A client whose token the servers reject is stopped before QEMU starts.
chk_wrong_token() {
    local wrong=$TMP/wrong-token small t0 rc out err first
    make_token "$wrong"
    mapfile -t small < <(gvm_guest_qemu_args 256 16)
    first=$(head -n1 "$POOL")
    t0=$(date +%s)
    timeout 60 "$G" run --pool "$POOL" --token-file "$wrong" --vm-id "eg-$$-$L-bad" -- \
        qemu-system-x86_64 "${small[@]}" </dev/null >"$TMP/$L.wrong.log" 2>&1
    rc=$?
    out=$(tr -d '\r' <"$TMP/$L.wrong.log")
    err=$(grep -m1 '^giantvm run:' <<<"$out")
    if ((rc != 0 && rc != 124)) && [[ $err == *"$first"* ]] && ! grep -q GIANTVM-BOOT <<<"$out"; then
        ok "$L: wrong token: refused in $(($(date +%s) - t0))s before the guest ran: ${err#giantvm run: }"
    else
        bad "$L: wrong token: rc=$rc, output: $(tail -n 5 <<<"$out")"
    fi
}

chk_result() { eg_verify "$L: giantvm run"; }

chk_banner() {
    eg_log | grep -qxF "[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode. Log: $R_ERR" &&
        ok "$L: UFFD banner naming the log" ||
        bad "$L: UFFD banner: no '[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode. Log: $R_ERR' line"
}

chk_pool_line() {
    local line wl="$S_N nodes (--pool $POOL), replicas 2"
    line=$(eg_log | grep -m1 '^\[GiantVM\] pool: ')
    [[ $line == "[GiantVM] pool: $wl" ]] && ok "$L: pool line: ${line#\[GiantVM\] }" ||
        bad "$L: pool line: '$line', want '$wl'"
}

chk_ram_line() {
    eg_log | grep -qF "guest RAM 'pc.ram': $S_MEM MiB in the pool" &&
        ok "$L: guest RAM 'pc.ram': $S_MEM MiB in the pool" || bad "$L: no \"guest RAM 'pc.ram': $S_MEM MiB in the pool\" line"
}

chk_engine_line() {
    local eng
    eng=$(eg_log | grep -m1 '^\[GiantVM\] engine: ')
    if [[ $eng =~ ^\[GiantVM\]\ engine:\ ([0-9]+)\ faults,\ ([0-9]+)\ pages\ fetched.*\ ([0-9]+)\ errors$ ]] &&
        ((BASH_REMATCH[1] > 0 && BASH_REMATCH[2] > 0)); then
        ok "$L: engine: ${BASH_REMATCH[1]} faults, ${BASH_REMATCH[2]} pages fetched, ${BASH_REMATCH[3]} errors"
    else
        bad "$L: engine final line missing or zero faults: '$eng'"
    fi
}

# per_node: {"node":"IP:PORT","state":..,"requests":N,"pages_in":N,...}, one per node
chk_per_node() {
    local obj node reqs pin served=0 seen=0
    eg_stats || return
    while IFS= read -r obj; do
        [[ $obj =~ \"node\":\"([^\"]*)\" ]] || continue
        node=${BASH_REMATCH[1]} reqs=0 pin=0
        [[ $obj =~ \"requests\":([0-9]+) ]] && reqs=${BASH_REMATCH[1]}
        [[ $obj =~ \"pages_in\":([0-9]+) ]] && pin=${BASH_REMATCH[1]}
        seen=$((seen + 1))
        grep -qxF "$node" "$POOL" || bad "$L: per_node names '$node', not in the pool file"
        ((pin > 0 || reqs > 0)) && served=$((served + 1))
    done < <(per_node_objs "$JS")
    if ((seen == S_N && served >= 2)); then ok "$L: pages served by $served of $seen nodes"; else
        bad "$L: per_node: $served of $seen nodes served pages (want $S_N nodes, >= 2 serving): $(head -c 600 <<<"$JS")"
    fi
}

chk_stat_live() {
    local vmid=eg-$$-$S_NAME
    if [[ $P_STAT_RC == - ]]; then
        bad "$L: giantvm stat $vmid --json: never ran (no \"VM '$vmid' running\" line while QEMU ran)"
    elif ((P_STAT_RC == 0)) && [[ $P_STAT_OUT == \{* && $P_STAT_OUT == *\} && $P_STAT_OUT == *'"budget_pages":'* ]]; then
        ok "$L: giantvm stat $vmid --json while running: budget_pages=$(jtop "$P_STAT_OUT" budget_pages) resident_pages=$(jtop "$P_STAT_OUT" resident_pages)"
    else
        bad "$L: giantvm stat $vmid --json: rc=$P_STAT_RC, output: $(head -c 400 <<<"$P_STAT_OUT")"
    fi
}

chk_evicted() {
    local ev wb
    eg_stats || return
    ev=$(jtop "$JS" evictions) wb=$(jtop "$JS" writebacks)
    [[ -n $ev ]] && ((ev > 0)) && ok "$L: evictions=$ev > 0" || bad "$L: evictions '$ev', want > 0: $(head -c 600 <<<"$JS")"
    [[ -n $wb ]] && ((wb > 0)) && ok "$L: writebacks=$wb > 0" || bad "$L: writebacks '$wb', want > 0"
}

chk_budget() {
    local bp rp wp=$((S_BUDGET_MIB * 256))
    eg_stats || return
    bp=$(jtop "$JS" budget_pages) rp=$(jtop "$JS" resident_pages)
    [[ $bp == "$wp" ]] && ok "$L: budget_pages=$bp (--local-mem $S_LOCAL)" || bad "$L: budget_pages '$bp', want $wp"
    [[ -n $rp ]] && ((rp <= wp)) && ok "$L: resident_pages=$rp <= budget" ||
        bad "$L: resident_pages '$rp' > budget $wp"
}

chk_no_errors() {
    local er lost
    eg_stats || return
    er=$(jtop "$JS" errors) lost=$(jtop "$JS" lost_pages)
    [[ $er == 0 && $lost == 0 ]] && ok "$L: errors=0 lost_pages=0" || bad "$L: errors '$er', lost_pages '$lost' (want 0)"
}

chk_sealed() {
    local se vb rj
    eg_stats || return
    se=$(grep -o '"sealed":[a-z]*' <<<"${JS%%\"per_node\"*}" | head -n1 | cut -d: -f2) vb=$(jtop "$JS" seal_version_bytes) rj=$(jtop "$JS" pages_rejected)
    [[ $se == true && -n $vb ]] && ((vb > 0)) && [[ $rj == 0 ]] &&
        ok "$L: sealed, seal_version_bytes=$vb, pages_rejected=0" ||
        bad "$L: sealed '$se', seal_version_bytes '$vb', pages_rejected '$rj' (want true, > 0, 0)"
}

chk_noticed() {
    local er nd
    eg_stats || return
    er=$(jtop "$JS" errors) nd=$(jtop "$JS" nodes_down)
    if [[ -n $er && -n $nd ]] && ((er > 0 || nd >= 1)); then
        ok "$L: the cut was noticed (errors=$er, nodes_down=$nd)"
    else
        bad "$L: final stats show errors=$er nodes_down=$nd (want errors > 0 or nodes_down >= 1)"
    fi
}

chk_no_lost() {
    local lost
    eg_stats || return
    lost=$(jtop "$JS" lost_pages)
    [[ $lost == 0 ]] && ok "$L: lost_pages=0 (a replica was always up)" ||
        bad "$L: lost_pages=$lost with node(s) ${S_CUT_NODES// /,} of $S_N cut"
}

chk_resync() {
    local rs ur
    eg_stats || return
    rs=$(jtop "$JS" resynced_stripes) ur=$(jtop "$JS" under_replicated_stripes)
    # A re-sync seen is an ok however soon the run ended; its absence FAILs
    # only when the run went on >= 10 s after the heal (time enough for it).
    if [[ -n $rs && -n $ur ]] && ((rs > 0 || ur == 0)); then
        ok "$L: re-sync after the heal (resynced_stripes=$rs, under_replicated_stripes=$ur; run ended ${P_HEAL_TO_EXIT}s after the heal)"
    elif [[ $P_HEAL_TO_EXIT != - ]] && (($(cut -d. -f1 <<<"$P_HEAL_TO_EXIT") >= 10)); then
        bad "$L: ${P_HEAL_TO_EXIT}s after the heal: resynced_stripes=$rs under_replicated_stripes=$ur (want > 0 / == 0)"
    else
        note "$L: run ended ${P_HEAL_TO_EXIT}s after the heal (< 10 s), resynced_stripes=$rs under_replicated_stripes=$ur: re-sync not asserted"
    fi
}

chk_gave_up() {
    local limit msg node missing_nodes=''
    [[ -n $P_CUT_AT ]] || return 0 # the cut check has FAILed
    limit=$((S_DEADLINE_MS / 1000 + DOWN_MARGIN_S))
    if ((P_RC == 124 || P_RC == 137)); then
        bad "$L: giantvm run did not return within ${S_TIMEOUT}s (rc=$P_RC: hang); stderr tail:"
        show_tail "$P_ERR"
    elif (($(cut -d. -f1 <<<"$P_CUT_TO_EXIT") > limit)); then
        bad "$L: giantvm run returned ${P_CUT_TO_EXIT}s after the cut (limit ${limit}s = deadline + ${DOWN_MARGIN_S}s)"
    else
        ok "$L: giantvm run returned ${P_CUT_TO_EXIT}s after the cut (deadline ${S_DEADLINE_MS} ms, limit ${limit}s)"
    fi
    if ((P_RC != 0)); then ok "$L: non-zero exit status $P_RC"; else
        bad "$L: exit status 0 with every replica unreachable"
    fi
    msg=$(grep -m1 "could not be fetched within $S_DEADLINE_MS ms from any replica: " "$P_ERR")
    while IFS= read -r node; do
        [[ -n $msg && $msg == *"$node"* ]] || missing_nodes+=" $node"
    done <"$POOL"
    if [[ -n $msg && -z $missing_nodes ]]; then
        ok "$L: stderr names the pages and every node: ${msg#giantvm: }"
    else
        bad "$L: no 'could not be fetched within $S_DEADLINE_MS ms from any replica: ...' line naming$missing_nodes in stderr (got '${msg}'); stderr tail:"
        show_tail "$P_ERR"
    fi
    if grep -qE 'poisoned|stopping the VM' "$P_ERR"; then
        ok "$L: stderr: $(grep -m1 -E 'poisoned|stopping the VM' "$P_ERR" | sed 's/^giantvm: //')"
    else
        bad "$L: stderr has neither 'poisoned' nor 'stopping the VM'"
    fi
}

# Under TCG, a poisoned page read by QEMU's vCPU thread kills QEMU.
chk_sigbus_if_poison() {
    if grep -q 'features: .*POISON' "$P_ERR"; then
        ((P_RC == 128 + 7)) && ok "$L: UFFDIO_POISON available: QEMU died of SIGBUS (rc=$P_RC)" ||
            bad "$L: the kernel has POISON; exit status $P_RC, want $((128 + 7)) (QEMU killed by SIGBUS)"
    else
        note "$L: no UFFDIO_POISON in the engine's features: SIGBUS not asserted"
    fi
}

chk_exit75() {
    ((P_RC == 75)) && ok "$L: exit status 75" || bad "$L: exit status $P_RC, want 75 (VM stopped without POISON)"
}

chk_vm_stopped() {
    grep -q 'stopping the VM' "$P_ERR" && grep -q '^giantvm run: the VM was stopped' "$P_ERR" &&
        ok "$L: 'stopping the VM' and 'giantvm run: the VM was stopped'" ||
        bad "$L: want the preload's 'stopping the VM' and giantvm run's 'the VM was stopped' lines"
}

chk_alive() {
    local p alive=0
    for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    ((alive == S_N)) && ok "$L: all $S_N memservers still running after the VM" ||
        bad "$L: only $alive of $S_N memservers still running"
}

chk_plain() {
    stop_servers
    eg_boot plain
    note "$L: plain QEMU rc=$R_RC wall=${R_WALL}s${R_QPID:+ VmHWM $(mib_of_kb "$R_HWM_KB") MiB, guest-RAM Rss peak $(mib_of_kb "$R_GRSS_KB") MiB}"
    eg_watchdog "$L: plain QEMU (local RAM)" || return
    eg_verify "$L: plain QEMU (local RAM)" "${P_SUM:-none}"
    L_HWM_KB=$R_HWM_KB L_GRSS_KB=$R_GRSS_KB L_QPID=$R_QPID
}

chk_memory() {
    local touched how overhead limit below
    ((P_HWM_KB > 0)) && ok "$L: pooled QEMU VmHWM measured ($(mib_of_kb "$P_HWM_KB") MiB)" ||
        bad "$L: pooled QEMU's VmHWM never read (qemu pid '${P_QPID}')"
    ((L_HWM_KB > 0)) && ok "$L: plain QEMU VmHWM measured ($(mib_of_kb "$L_HWM_KB") MiB)" ||
        bad "$L: plain QEMU's VmHWM never read (qemu pid '${L_QPID}'; is 'plain' before 'memory'?)"
    ((P_HWM_KB > 0 && L_HWM_KB > 0)) || return
    if ((L_GRSS_KB > 0)); then
        touched=$L_GRSS_KB how="guest-RAM mapping Rss"
    else
        # mapping not found in smaps: the workload plus ~96 MiB for the guest
        # kernel (guest.sh: MEM_MIB >= MIB + 96)
        touched=$(((S_MIB + 96) * 1024)) how="workload + 96 MiB (guest-RAM mapping not found in smaps)"
    fi
    overhead=$((L_HWM_KB - touched))
    ((overhead < 0)) && overhead=0
    limit=$(((S_BUDGET_MIB + MARGIN_MIB) * 1024 + overhead))
    below=$((L_HWM_KB - S_MIB * 1024 / 2))
    note "$L memory: plain VmHWM $(mib_of_kb "$L_HWM_KB") MiB, guest RAM touched $(mib_of_kb "$touched") MiB ($how)" \
        "=> QEMU overhead $(mib_of_kb "$overhead") MiB; pooled VmHWM $(mib_of_kb "$P_HWM_KB") MiB (guest-RAM Rss" \
        "peak $(mib_of_kb "$P_GRSS_KB") MiB); pooled/plain = $(awk -v a="$P_HWM_KB" -v b="$L_HWM_KB" 'BEGIN { printf "%.2f", a / b }')"
    ((P_HWM_KB <= limit)) && ok "$L: pooled VmHWM $(mib_of_kb "$P_HWM_KB") MiB <= budget + overhead + $MARGIN_MIB MiB = $(mib_of_kb "$limit") MiB" ||
        bad "$L: pooled VmHWM $(mib_of_kb "$P_HWM_KB") MiB > budget + overhead + $MARGIN_MIB MiB = $(mib_of_kb "$limit") MiB"
    ((P_HWM_KB <= below)) && ok "$L: pooled VmHWM $(mib_of_kb "$P_HWM_KB") MiB <= plain VmHWM $(mib_of_kb "$L_HWM_KB") MiB - $((S_MIB / 2)) MiB" ||
        bad "$L: pooled VmHWM $(mib_of_kb "$P_HWM_KB") MiB not clearly below plain $(mib_of_kb "$L_HWM_KB") MiB (want <= plain - $((S_MIB / 2)) MiB)"
    if ((P_GRSS_KB > 0)); then
        ((P_GRSS_KB <= S_BUDGET_MIB * 1024)) && ok "$L: pooled guest-RAM Rss peak $(mib_of_kb "$P_GRSS_KB") MiB <= budget $S_BUDGET_MIB MiB (0.2 s samples)" ||
            bad "$L: pooled guest-RAM Rss peak $(mib_of_kb "$P_GRSS_KB") MiB > budget $S_BUDGET_MIB MiB"
    fi
}

# ---------------------------------------------------------------- one scenario
# run_scenario INDEX: servers, pre-boot checks, the pooled boot, post-boot checks.
run_scenario() {
    local c t0=$SECONDS
    L=$S_NAME PORT=$((9901 + $1)) JS='' JS_MISSING='' P_SUM='' L_HWM_KB=0 L_GRSS_KB=-1 L_QPID=''
    expect=$("$GVM_WORKLOAD" --expect "$S_MIB" "$S_SEED")
    note "== $S_NAME: $S_KIND x$S_N$( ((S_TOKEN)) && echo ' +token'), guest -m $S_MEM, workload $S_MIB MiB seed $S_SEED x$S_PASSES" \
        "(checksum $expect), --local-mem $S_LOCAL${S_ENV[*]:+ ${S_ENV[*]}}${S_ARGS[*]:+ ${S_ARGS[*]}}${S_CUT_NODES:+, cut ${S_CUT_NODES// /,} @$S_CUT_WHEN}$( ((S_HEAL)) && echo " heal ${S_HEAL}s")"
    stop_servers
    if [[ $S_KIND == netns ]]; then
        heal_all || { bad "$L: cannot heal the links"; return 1; }
        start_memservers "$S_N" netns "$PORT" || return 1
    else
        start_memservers "$S_N" || return 1
    fi
    ok "$L: $S_N memservers listening on $(paste -sd' ' "$POOL")"
    for c in "${S_CHECKS[@]}"; do
        [[ $PRE_CHECKS == *" $c "* ]] && "chk_$c"
    done
    eg_boot pooled
    P_RC=$R_RC P_ERR=$R_ERR P_STATS=$R_STATS P_HWM_KB=$R_HWM_KB P_GRSS_KB=$R_GRSS_KB
    P_QPID=$R_QPID P_STAT_RC=$R_STAT_RC P_STAT_OUT=$R_STAT_OUT P_CUT_AT=$R_CUT_AT
    P_CUT_TO_EXIT=$R_CUT_TO_EXIT P_HEAL_TO_EXIT=$R_HEAL_TO_EXIT
    eg_notes
    [[ -n $S_CUT_NODES ]] && eg_cut_timing
    if eg_watchdog "$L"; then
        for c in "${S_CHECKS[@]}"; do
            [[ $PRE_CHECKS == *" $c "* ]] && continue
            "chk_$c"
            [[ $c == result ]] && P_SUM=$R_SUM
        done
    fi
    stop_servers
    note "$S_NAME: $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- main
ROWS=() NAMES=() NETNS_MAX=0 KNOWN_CHECKS=''
while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    load_row "$line" || { bad "EG_TABLE: bad row"; finish; }
    ROWS+=("$line") NAMES+=("$S_NAME")
done <<<"$EG_TABLE"
for c in $(declare -F | awk '{print $3}' | sed -n 's/^chk_//p'); do KNOWN_CHECKS+=" $c"; done
for line in "${ROWS[@]}"; do
    load_row "$line"
    for c in "${S_CHECKS[@]}"; do
        [[ "$KNOWN_CHECKS " == *" $c "* ]] || { bad "EG_TABLE: $S_NAME: unknown check '$c'"; finish; }
        [[ $S_KIND == netns || " token_file needs_token " != *" $c "* ]] ||
            { bad "EG_TABLE: $S_NAME: check '$c' needs 'netns N +token' servers"; finish; }
    done
done
WANT=" ${GVM_EVICT_SCENARIOS:-${NAMES[*]}} "
for w in $WANT; do
    [[ " ${NAMES[*]} " == *" $w "* ]] || { bad "GVM_EVICT_SCENARIOS: no scenario '$w' (have: ${NAMES[*]})"; finish; }
done

if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' in $REPO first)"
    finish
fi
TMP=$(mktemp -d /tmp/gvm-e2e-evict.XXXXXX) || { bad "mktemp"; finish; }
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
SKIPPED=()
for i in "${!ROWS[@]}"; do
    [[ $WANT == *" ${NAMES[i]} "* ]] || continue
    load_row "${ROWS[i]}"
    if [[ $S_KIND == netns ]]; then
        if ((EUID != 0)); then SKIPPED+=("$S_NAME"); else ((S_N > NETNS_MAX)) && NETNS_MAX=$S_N; fi
    fi
done
if ((NETNS_MAX > 0)); then
    gvm_netns_up "$NETNS_MAX" || missing "gvm_netns_up $NETNS_MAX failed"
    trap_cleanup # after netns.sh's traps: stop QEMU and the servers first
    TOKEN=$TMP/token
    make_token "$TOKEN"
fi
note "kernel: $GVM_KERNEL_PKG; scenarios:$WANT"

for i in "${!ROWS[@]}"; do
    [[ $WANT == *" ${NAMES[i]} "* && " ${SKIPPED[*]} " != *" ${NAMES[i]} "* ]] || continue
    load_row "${ROWS[i]}"
    run_scenario "$i"
done
stop_servers
if ((${#SKIPPED[@]})) && ((fail == 0)); then missing "network namespaces need root: scenarios ${SKIPPED[*]} not run"; fi
finish
