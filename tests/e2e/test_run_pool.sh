#!/usr/bin/env bash
# tests/e2e/test_run_pool.sh — the main end-to-end test: a VM whose RAM lives
# in a pool of three memory servers, each on its own simulated host.
#
#   1. gvm_netns_up 3; in namespace i, `giantvm memserver --listen IP_i:9999
#      --token-file TOKEN --port-file F` (TOKEN: 32 random hex chars, mode 600);
#      a server on a non-loopback address without a token is refused.
#   2. A pool file with the three "IP_i:9999" lines, then
#        GIANTVM_STATS_OUT=JSON timeout 600 giantvm run --pool FILE
#          --token-file TOKEN --local-mem 160M --vm-id e2e-$$ -- qemu-system-x86_64
#          <gvm_guest_qemu_args 512 256 gvm.seed=7>
#      must exit 0, print the UFFD banner, "guest RAM 'pc.ram': 512 MiB in the
#      pool", a GIANTVM-RESULT line with verify=ok and the checksum that
#      `workload --expect 256 7` computes on the host, the engine's final line
#      with a non-zero fault count, and a final JSON whose per_node array shows
#      at least two nodes that served pages (pages_in > 0 or requests > 0).
#   3. The same guest on plain QEMU (local RAM) gives the same checksum.
# Servers and namespaces are removed on every exit path.
#
# Env: GVM_TEST_SEED (default 7), GVM_TEST_TIMEOUT (default 600 s),
#      GVM_BUILD_DIR (default <repo>/build), GIANTVM_CACHE (see guest.sh),
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

SEED=${GVM_TEST_SEED:-7}
TIMEOUT=${GVM_TEST_TIMEOUT:-600}
MEM=512 MIB=256 PORT=9999 NODES=3
BUILD=${GVM_BUILD_DIR:-$REPO/build}

# shellcheck source=harness.sh
. "$HERE/harness.sh"

if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' in $REPO first)"
    finish
fi

TMP=$(mktemp -d /tmp/gvm-e2e-pool.XXXXXX) || { bad "mktemp"; finish; }
trap_cleanup

# Run a snapshot of the build, so a concurrent `make` cannot swap the binary
# (or leave it half-written) under a running test.  The preload library is
# looked up next to the giantvm binary.
snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm

# ---------------------------------------------------------------- prerequisites
((EUID == 0)) || missing "network namespaces need root"
gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
gvm_netns_up "$NODES" || missing "gvm_netns_up $NODES failed"
trap_cleanup # after netns.sh's traps: stop the servers first

expect=$("$GVM_WORKLOAD" --expect "$MIB" "$SEED")
note "kernel: $GVM_KERNEL_PKG; expected checksum for mib=$MIB seed=$SEED: $expect"

# ---------------------------------------------------------------- servers
TOKEN=$TMP/token
make_token "$TOKEN"
if [[ $(wc -c <"$TOKEN") == 32 ]]; then ok "token file: 32 hex chars, mode $(stat -c %a "$TOKEN")"; else
    bad "token file: $(wc -c <"$TOKEN") bytes"
fi

# A non-loopback listener without a token is refused.
out=$(timeout 10 ip netns exec "${GVM_NETNS[1]}" "$G" memserver --listen "${GVM_NETNS_IP[1]}:$((PORT - 1))" 2>&1)
rc=$?
if ((rc != 0 && rc != 124)) && [[ $out == *token* ]]; then
    ok "memserver refuses ${GVM_NETNS_IP[1]} without --token-file (rc=$rc)"
else
    bad "memserver without token: rc=$rc, output: $out"
fi

if start_memservers "$NODES" netns "$PORT"; then
    ok "$NODES memservers listening (${GVM_NETNS_IPS// /, } port $PORT)"
else
    finish
fi

# ---------------------------------------------------------------- wrong token
# A client whose token the servers reject is stopped before QEMU starts.
WRONG=$TMP/wrong-token
(umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WRONG")
mapfile -t small < <(gvm_guest_qemu_args 256 16)
t0=$(date +%s)
timeout 60 "$G" run --pool "$POOL" --token-file "$WRONG" --vm-id "e2e-$$-bad" -- \
    qemu-system-x86_64 "${small[@]}" </dev/null >"$TMP/wrong.log" 2>&1
rc=$?
out=$(tr -d '\r' <"$TMP/wrong.log")
err=$(grep -m1 '^giantvm run:' <<<"$out")
if ((rc != 0 && rc != 124)) && [[ $err == *"${GVM_NETNS_IP[1]}:$PORT"* ]] && ! grep -q GIANTVM-BOOT <<<"$out"; then
    ok "wrong token: refused in $(($(date +%s) - t0))s before the guest ran: ${err#giantvm run: }"
else
    bad "wrong token: rc=$rc, output: $(tail -n 5 <<<"$out")"
fi

# ---------------------------------------------------------------- the pool run
log=$TMP/run.log
STATS=$TMP/stats.json
# shellcheck disable=SC2034  # read by gvm_guest_boot
# A local budget below what the workload writes, so pages really travel to the
# pool and back (a fresh VM's never-written pages are zero-filled locally).
GVM_BOOT_PREFIX=(env "GIANTVM_STATS_OUT=$STATS" "$G" run --pool "$POOL" --token-file "$TOKEN"
    --local-mem 160M --vm-id "e2e-$$" --)
gvm_guest_boot "$log" "$TIMEOUT" "$MEM" "$MIB" "gvm.seed=$SEED"
rc=$?
unset GVM_BOOT_PREFIX
note "giantvm run rc=$rc wall=${GVM_BOOT_S}s: ${GVM_RESULT:-<no GIANTVM-RESULT line>}"
clean=$(tr -d '\r' <"$log")
if ((rc == 0)); then ok "giantvm run exited 0 in ${GVM_BOOT_S}s"; else
    bad "giantvm run: exit status $rc (124 = timeout ${TIMEOUT}s; 3 = exit 0 without a result); log tail:"
    show_tail "$log"
fi
grep -qxF "[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode." <<<"$clean" &&
    ok "UFFD banner" || bad "UFFD banner: no '[GiantVM] No Custom Kernel. Entering UFFD High-Perf Mode.' line"
line=$(grep -m1 '^\[GiantVM\] pool: ' <<<"$clean")
[[ $line == "[GiantVM] pool: $NODES nodes (--pool $POOL), replicas 2" ]] &&
    ok "pool line: ${line#\[GiantVM\] }" || bad "pool line: '$line', want '$NODES nodes (--pool $POOL), replicas 2'"
grep -qF "guest RAM 'pc.ram': $MEM MiB in the pool" <<<"$clean" &&
    ok "guest RAM 'pc.ram': $MEM MiB in the pool" || bad "no \"guest RAM 'pc.ram': $MEM MiB in the pool\" line"
n_res=$(grep -c '^GIANTVM-RESULT ' <<<"$clean")
re='^GIANTVM-RESULT mib=([0-9]+) seed=([0-9]+) checksum=([0-9a-f]{16}) verify=([A-Za-z]+) '
pool_sum=
if [[ $n_res == 1 && $GVM_RESULT =~ $re ]]; then
    pool_sum=${BASH_REMATCH[3]}
    if [[ ${BASH_REMATCH[1]} == "$MIB" && ${BASH_REMATCH[2]} == "$SEED" && ${BASH_REMATCH[4]} == ok ]]; then
        ok "result: mib=$MIB seed=$SEED verify=ok"
    else
        bad "result: '$GVM_RESULT' (want mib=$MIB seed=$SEED verify=ok)"
    fi
    [[ $pool_sum == "$expect" ]] && ok "checksum $pool_sum == workload --expect $MIB $SEED" ||
        bad "checksum $pool_sum != expected $expect"
else
    bad "result: $n_res GIANTVM-RESULT lines, first '${GVM_RESULT}'"
fi
eng=$(grep -m1 '^\[GiantVM\] engine: ' <<<"$clean")
if [[ $eng =~ ^\[GiantVM\]\ engine:\ ([0-9]+)\ faults,\ ([0-9]+)\ pages\ fetched.*\ ([0-9]+)\ errors$ ]] &&
    ((BASH_REMATCH[1] > 0 && BASH_REMATCH[2] > 0)); then
    ok "engine: ${BASH_REMATCH[1]} faults, ${BASH_REMATCH[2]} pages fetched, ${BASH_REMATCH[3]} errors"
else
    bad "engine final line missing or zero faults: '$eng'"
fi

# per_node: {"node":"IP:PORT","state":..,"requests":N,"pages_in":N,...}, one per node
if [[ -s $STATS ]]; then
    per=$(sed -n 's/.*"per_node":\[\(.*\)\].*/\1/p' "$STATS")
    served=0 seen=0 desc=
    while IFS= read -r obj; do
        [[ $obj =~ \"node\":\"([^\"]*)\" ]] || continue
        node=${BASH_REMATCH[1]}
        reqs=0 pin=0
        [[ $obj =~ \"requests\":([0-9]+) ]] && reqs=${BASH_REMATCH[1]}
        [[ $obj =~ \"pages_in\":([0-9]+) ]] && pin=${BASH_REMATCH[1]}
        seen=$((seen + 1))
        desc+=" $node:requests=$reqs,pages_in=$pin"
        grep -qxF "$node" "$POOL" || bad "per_node names '$node', not in the pool file"
        ((pin > 0 || reqs > 0)) && served=$((served + 1))
    done <<<"${per//\},\{/$'}\n{'}"
    note "per_node:$desc"
    if ((seen == NODES && served >= 2)); then ok "pages served by $served of $seen nodes"; else
        bad "per_node: $served of $seen nodes served pages (want $NODES nodes, >= 2 serving): $(head -c 600 "$STATS")"
    fi
else
    bad "GIANTVM_STATS_OUT=$STATS: no final engine JSON written"
fi

alive=0
for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
((alive == NODES)) && ok "all $NODES memservers still running after the VM" ||
    bad "only $alive of $NODES memservers still running"
stop_servers

# ---------------------------------------------------------------- local RAM
gvm_guest_boot "$log" "$TIMEOUT" "$MEM" "$MIB" "gvm.seed=$SEED"
rc=$?
note "plain qemu rc=$rc wall=${GVM_BOOT_S}s: ${GVM_RESULT:-<no GIANTVM-RESULT line>}"
if ((rc == 0)) && [[ $GVM_RESULT =~ $re && ${BASH_REMATCH[4]} == ok ]]; then
    local_sum=${BASH_REMATCH[3]}
    if [[ $local_sum == "$expect" && $local_sum == "$pool_sum" ]]; then
        ok "plain QEMU (local RAM): same checksum $local_sum"
    else
        bad "plain QEMU checksum $local_sum, pool run '$pool_sum', expected $expect"
    fi
else
    bad "plain QEMU: rc=$rc result '${GVM_RESULT}'"
    show_tail "$log"
fi
finish
