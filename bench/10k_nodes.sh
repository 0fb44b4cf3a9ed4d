#!/usr/bin/env bash
# bench/10k_nodes.sh — `giantvm bench` over 1 node vs. over 10,000 nodes.
#
#   bench/10k_nodes.sh [--size SIZE] [--nodes N] [--runs R] [--timeout SEC]
#
# Creates one network namespace gvm10kb-<pid> with only lo (up), where every
# 127.x.y.z address reaches lo, and starts ONE `giantvm memserver --listen
# 0.0.0.0:9999 --token-file T` in it. Then, inside the namespace, runs
#   giantvm bench --pool ONE  --size SIZE --replicas 1 --json   (127.0.0.1:9999)
#   giantvm bench --pool MANY --size SIZE --replicas 1 --json   (N lines 127.A.B.1:9999,
#                                                   A = 1 + i/250, B = i%250)
# R times in turn (default 1), and prints each JSON line as it comes, then
#   seq_GBps ratio = seq_GBps(N nodes) / seq_GBps(1 node)   (median of the runs)
# with startup_ms, peak_fds and client_bytes_per_node of both. The goal is a
# ratio >= 0.8. Both pools are served by the same process on the same
# machine, so the ratio isolates the client's cost of spreading over N nodes
# (connections, fds, placement); the absolute figures depend on the machine
# and its load (run with R >= 3 on a busy machine).
# Defaults: --size 1G --nodes 10000 --runs 1 --timeout 300 (per bench run).
# Needs root and build/giantvm (GVM_BUILD_DIR to override). Exit status 0 when
# every run verified, 1 otherwise (the goal is reported, not enforced).
# shellcheck disable=SC2317  # cleanup() runs from traps
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${GVM_BUILD_DIR:-$ROOT/build}
size=1G nodes=10000 runs=1 to=300 port=9999
while (($#)); do
    case $1 in
    --size) size=${2:?}; shift ;;
    --nodes) nodes=${2:?}; shift ;;
    --runs) runs=${2:?}; shift ;;
    --timeout) to=${2:?}; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "10k_nodes.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "10k_nodes.sh: $*" >&2; exit 1; }
if [[ ! $nodes =~ ^[0-9]+$ ]] || ((nodes < 1 || nodes > 62500)); then die "--nodes $nodes: 1..62500"; fi
if [[ ! $runs =~ ^[0-9]+$ ]] || ((runs < 1)); then die "--runs $runs: at least 1"; fi
((EUID == 0)) || die "needs root (network namespaces)"
command -v ip >/dev/null || die "'ip' (iproute2) not found"
[[ -x $BUILD/giantvm ]] || die "$BUILD/giantvm missing (run 'make -j2' first)"

NS=gvm10kb-$$ NS_MADE='' SERVER_PID=''
TMP=$(mktemp -d /tmp/gvm-bench-10k.XXXXXX) || die "mktemp"
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for ((t = 0; t < 50; t++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
    fi
    if [[ -n $NS_MADE ]]; then
        local pids
        pids=$(ip netns pids "$NS" 2>/dev/null)
        # shellcheck disable=SC2086
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
        ip netns del "$NS" 2>/dev/null
        NS_MADE=
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'cleanup; trap - INT; kill -INT $$' INT
trap 'cleanup; trap - TERM; kill -TERM $$' TERM

# A copy of the binary, so a concurrent `make` cannot swap it mid-run.
cp "$BUILD/giantvm" "$TMP/giantvm" || die "cannot copy $BUILD/giantvm"
G=$TMP/giantvm
# One fd per node touched, in the client and the server.
ulimit -n 65536 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null
(($(ulimit -n) >= nodes + 1024)) || echo "# warning: open-files limit $(ulimit -n) < $((nodes + 1024))" >&2

ip netns add "$NS" || die "ip netns add $NS failed"
NS_MADE=1
ip -n "$NS" link set lo up || die "ip -n $NS link set lo up failed"
(umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/token")
# One server for 10,000 nodes, every connection from 127.0.0.1: lift the
# per-address limits (a real node sees one connection per VM host).
ip netns exec "$NS" "$G" memserver --listen "0.0.0.0:$port" --token-file "$TMP/token" \
    --max-peer-conns 20000 --max-unauthed 8000 \
    --port-file "$TMP/port" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
for ((t = 0; t < 100; t++)); do [[ -s $TMP/port ]] && break; sleep 0.1; done
[[ -s $TMP/port ]] || { cat "$TMP/server.log" >&2; die "memserver did not start"; }

echo "127.0.0.1:$port" >"$TMP/one.conf"
awk -v n="$nodes" -v port="$port" 'BEGIN {
    for (i = 0; i < n; i++) printf "127.%d.%d.1:%d\n", 1 + int(i / 250), i % 250, port
}' >"$TMP/many.conf"

# bench POOL -> prints the JSON line on stdout; the run's stderr goes to TMP/err
bench() {
    timeout --kill-after=10 "$to" ip netns exec "$NS" "$G" bench --pool "$1" --token-file "$TMP/token" \
        --size "$size" --replicas 1 --json 2>"$TMP/err" | grep -m1 '^{'
}
jnum() { sed -n "s/.*\"$2\":\([-0-9.]*\).*/\1/p" <<<"$1"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

one=() many=() failed=0
for ((r = 1; r <= runs; r++)); do
    for which in one many; do
        j=$(bench "$TMP/$which.conf")
        if [[ $j != *'"verified":true'* ]]; then
            echo "# run $r ($which): bench failed; stderr:" >&2
            tail -n 15 "$TMP/err" | sed 's/^/#   /' >&2
            failed=1
            continue
        fi
        echo "$j"
        if [[ $which == one ]]; then one+=("$j"); else many+=("$j"); fi
    done
done
((${#one[@]} && ${#many[@]})) || exit 1

s1=$(for j in "${one[@]}"; do jnum "$j" seq_GBps; done | median)
sn=$(for j in "${many[@]}"; do jnum "$j" seq_GBps; done | median)
pick() { # KEY ARRAY... : median of KEY
    local k=$1
    shift
    for j in "$@"; do jnum "$j" "$k"; done | median
}
ratio=$(awk -v a="$sn" -v b="$s1" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
met=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.8) ? "met" : "NOT met" }')
echo "# $runs run(s) each, size $size; medians; 1 node | $nodes nodes"
printf '# %-22s %10s | %10s\n' seq_GBps "$s1" "$sn"
for k in startup_ms peak_fds client_bytes_per_node region_nodes seq_nodes_connected remote_fault_p50_us fill_GBps; do
    printf '# %-22s %10s | %10s\n' "$k" "$(pick "$k" "${one[@]}")" "$(pick "$k" "${many[@]}")"
done
echo "# seq_GBps ratio ($nodes nodes / 1 node): $ratio (goal >= 0.8: $met)"
exit "$failed"
