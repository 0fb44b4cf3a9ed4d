#!/usr/bin/env bash
# tests/e2e/test_10k_nodes.sh — a pool of 10,000 memory nodes.
#
#   1. One network namespace gvm10k-<pid> with only lo (up). Inside it every
#      127.x.y.z address reaches lo, so ONE `giantvm memserver --listen
#      0.0.0.0:9999 --token-file TOKEN` serves 10,000 distinct node addresses
#      127.A.B.1:9999 (node i: A = 1 + i/250, B = i%250).  Nothing leaves the
#      namespace.
#   2. A pool file with those 10,000 lines; inside the namespace
#        giantvm bench --pool FILE --size 1G --replicas 1 --json
#      fills the region over the nodes that hold it, faults every page back
#      through the engine and verifies it.  It must exit 0 with
#      "verified":true, "nodes":10000, and the engine must have touched many
#      nodes: seq_nodes_connected == region_nodes (every node holding a stripe
#      of the region; >= 500 of them).  peak_fds, startup_ms and
#      client_bytes_per_node are checked against loose bounds and printed.
#   3. The same file with line 7777 = "127.300.1.1" is rejected by
#      `giantvm bench --pool BAD` with a non-zero exit and ":7777:" in the
#      message, before anything is connected.
# The open-files limit is raised for the namespace's processes (the client
# holds one socket per node it touches, the server one per client
# connection). The server and the namespace are removed on every exit path.
#
# Env: GVM_BUILD_DIR (default <repo>/build), GVM_10K_TIMEOUT (bench timeout,
#      default 170 s), CI=true: a missing prerequisite fails instead of skipping.
# Needs `make` done first (build/giantvm) and root.
# Prints "ok  <case>" / "FAIL <case>: why"; closing line "N passed, M failed";
# exit 0 iff nothing failed.
# shellcheck disable=SC2015,SC2317  # ok() always succeeds; trap handlers
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${GVM_BUILD_DIR:-$REPO/build}
NODES=10000 PORT=9999 SIZE=1G BAD_LINE=7777
TIMEOUT=${GVM_10K_TIMEOUT:-170}
NOFILE=65536
T0=$SECONDS

# shellcheck source=harness.sh
. "$HERE/harness.sh"
# shellcheck disable=SC2154  # pass/fail come from harness.sh
finish() { # harness.sh's, with the runtime
    note "runtime $((SECONDS - T0)) s"
    echo "$pass passed, $fail failed"
    ((fail == 0))
    exit $?
}
# The number value of "key" in a one-line JSON object ("" when absent).
jnum() { sed -n "s/.*\"$2\":\([-0-9.]*\).*/\1/p" <<<"$1"; }

if [[ ! -x $BUILD/giantvm ]]; then
    bad "build: $BUILD/giantvm missing (run 'make -j2' in $REPO first)"
    finish
fi

NS=gvm10k-$$
NS_MADE=
TMP=$(mktemp -d /tmp/gvm-e2e-10k.XXXXXX) || { bad "mktemp"; finish; }
cleanup_more() { # harness.sh's cleanup calls it after stopping the server
    if [[ -n $NS_MADE ]]; then
        # anything still running inside (e.g. a bench killed by timeout) would keep it alive
        local pids
        pids=$(ip netns pids "$NS" 2>/dev/null)
        # shellcheck disable=SC2086
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
        ip netns del "$NS" 2>/dev/null || echo "# cleanup: cannot delete namespace $NS" >&2
        NS_MADE=
    fi
}
trap_cleanup

snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

# ---------------------------------------------------------------- prerequisites
((EUID == 0)) || missing "network namespaces need root (EUID=$EUID)"
command -v ip >/dev/null 2>&1 || missing "'ip' (iproute2) not found"
# One fd per node touched, in the client and in the server: raise the limit
# for everything started from here (root may raise the hard limit).
ulimit -n "$NOFILE" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null
if (($(ulimit -n) < NODES + 1024)); then
    missing "open-files limit $(ulimit -n) (hard $(ulimit -Hn)); need at least $((NODES + 1024))"
fi
note "open-files limit $(ulimit -n)"

# ---------------------------------------------------------------- namespace + server
out=$(ip netns add "$NS" 2>&1) || missing "ip netns add $NS: $out"
NS_MADE=1
out=$(ip -n "$NS" link set lo up 2>&1) || { bad "ip -n $NS link set lo up: $out"; finish; }
if ip -n "$NS" -o link show | grep -v ': lo:' | grep -q .; then
    bad "namespace $NS has interfaces besides lo: $(ip -n "$NS" -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
    finish
fi

TOKEN=$TMP/token
make_token "$TOKEN"
# One server stands for 10,000 nodes, and every connection reaches it from
# 127.0.0.1: lift the per-address limits a real node needs against tenants
# (a real node sees one connection per VM host), and let the bench's ~2,000
# connections say HELLO together.
ip netns exec "$NS" "$G" memserver --listen "0.0.0.0:$PORT" --token-file "$TOKEN" \
    --max-peer-conns 20000 --max-unauthed 8000 \
    --port-file "$TMP/port" >"$TMP/server.log" 2>&1 &
SERVER_PIDS=($!)
wait_ports "$TMP/port"
if [[ $(cat "$TMP/port" 2>/dev/null) == "$PORT" ]]; then
    ok "memserver listening on 0.0.0.0:$PORT in namespace $NS (lo only)"
else
    bad "memserver did not start (port file: '$(cat "$TMP/port" 2>/dev/null)')"
    show_tail "$TMP/server.log" 15
    finish
fi

# ---------------------------------------------------------------- pool files
POOL=$TMP/pool10k.conf
awk -v n="$NODES" -v port="$PORT" 'BEGIN {
    print "# '"$NODES"' memory nodes, all served by one memserver in namespace '"$NS"'"
    for (i = 0; i < n; i++) printf "127.%d.%d.1:%d\n", 1 + int(i / 250), i % 250, port
}' >"$POOL"
lines=$(grep -vc '^#' "$POOL")
distinct=$(grep -v '^#' "$POOL" | sort -u | wc -l)
if ((lines == NODES && distinct == NODES)); then
    ok "pool file: $NODES distinct nodes ($(sed -n 2p "$POOL") .. $(tail -n1 "$POOL"))"
else
    bad "pool file: $lines node lines, $distinct distinct (want $NODES)"
fi

# Line BAD_LINE of the file (counting the comment line) becomes an invalid address.
BADPOOL=$TMP/bad.conf
awk -v l="$BAD_LINE" 'NR == l { print "127.300.1.1"; next } { print }' "$POOL" >"$BADPOOL"
t1=$SECONDS
out=$(timeout 60 ip netns exec "$NS" "$G" bench --pool "$BADPOOL" --token-file "$TOKEN" --size 1M 2>&1)
rc=$?
if ((rc != 0 && rc != 124)) && [[ $out == *":$BAD_LINE:"* && $out == *127.300.1.1* ]]; then
    ok "bad line $BAD_LINE rejected (rc=$rc, $((SECONDS - t1)) s): $(head -n1 <<<"$out")"
else
    bad "bad pool file: rc=$rc, want non-zero with ':$BAD_LINE:' and '127.300.1.1'; output: $(head -c 400 <<<"$out")"
fi

# ---------------------------------------------------------------- the 10k bench
t1=$SECONDS
timeout --kill-after=10 "$TIMEOUT" ip netns exec "$NS" "$G" bench --pool "$POOL" --token-file "$TOKEN" \
    --size "$SIZE" --replicas 1 --json >"$TMP/bench.out" 2>"$TMP/bench.err"
rc=$?
secs=$((SECONDS - t1))
json=$(grep -m1 '^{' "$TMP/bench.out")
note "bench ($secs s): $json"
if ((rc == 0)); then ok "bench over $NODES nodes exited 0 in $secs s"; else
    bad "bench: exit status $rc (124 = timeout ${TIMEOUT}s); stderr tail:"
    show_tail "$TMP/bench.err" 15
fi
if [[ -n $json ]]; then
    [[ $json == *'"verified":true'* ]] && ok "every page verified (\"verified\":true)" ||
        bad "no \"verified\":true in '$json'"
    n=$(jnum "$json" nodes)
    [[ $n == "$NODES" ]] && ok "\"nodes\":$NODES" || bad "\"nodes\":'$n', want $NODES"
    region_nodes=$(jnum "$json" region_nodes)
    conn=$(jnum "$json" seq_nodes_connected)
    faults=$(jnum "$json" seq_faults)
    if [[ $region_nodes =~ ^[0-9]+$ && $conn =~ ^[0-9]+$ ]] && ((region_nodes >= 500 && conn == region_nodes)); then
        ok "engine touched $conn distinct nodes: every node holding a stripe of the region ($faults faults)"
    else
        bad "engine touched '$conn' nodes, region on '$region_nodes' (want equal and >= 500)"
    fi
    fds=$(jnum "$json" peak_fds)
    # one socket per node touched, plus a few; never the fill's and the engine's at once
    if [[ $fds =~ ^[0-9]+$ ]] && ((fds >= conn && fds < conn + 64)); then
        ok "peak_fds $fds: one per node touched (+$((fds - conn)))"
    else
        bad "peak_fds '$fds' for $conn nodes touched (want $conn .. $((conn + 63)))"
    fi
    ms=$(jnum "$json" startup_ms)
    if [[ $ms =~ ^[0-9.]+$ ]] && awk -v v="$ms" 'BEGIN { exit !(v > 0 && v < 2000) }'; then
        ok "startup_ms $ms (load $NODES lines + placement)"
    else
        bad "startup_ms '$ms' (want 0 < x < 2000)"
    fi
    bpn=$(jnum "$json" client_bytes_per_node)
    if [[ $bpn =~ ^[0-9.]+$ ]] && awk -v v="$bpn" 'BEGIN { exit !(v > 0 && v < 256) }'; then
        ok "client_bytes_per_node $bpn"
    else
        bad "client_bytes_per_node '$bpn' (want 0 < x < 256)"
    fi
    note "seq_GBps $(jnum "$json" seq_GBps), remote_fault_p50_us $(jnum "$json" remote_fault_p50_us), fill_GBps $(jnum "$json" fill_GBps)"
else
    bad "bench printed no JSON line; stdout: $(head -c 400 "$TMP/bench.out")"
    show_tail "$TMP/bench.err" 15
fi

# ---------------------------------------------------------------- server health
if kill -0 "${SERVER_PIDS[0]}" 2>/dev/null; then ok "memserver still running"; else
    bad "memserver exited during the run"
    show_tail "$TMP/server.log" 15
fi
if grep -qiE 'open files|EMFILE|dropping new connections' "$TMP/server.log" "$TMP/bench.err"; then
    bad "out of file descriptors: $(grep -hiE 'open files|EMFILE|dropping' "$TMP/server.log" "$TMP/bench.err" | head -n3 | tr '\n' ' ')"
else
    ok "no file-descriptor exhaustion in the server or the client"
fi
stop_servers
finish
