#!/usr/bin/env bash
# tests/e2e/test_metrics_guest.sh — Prometheus metrics of a real guest
# (docs/METRICS.md): one memory server with --metrics, a guest under
# `giantvm run --local-mem` (so pages are evicted, written back and fetched
# again) writing and verifying its workload, scraped while it runs with
# `giantvm stat VM --prometheus` and the exporter `giantvm stat --metrics`;
# the memory server scraped over HTTP before and after. Every output passes
# `promtool check metrics`; the values move the way the run says they must.
#
# Env: GVM_TEST_SEED (default 3), GVM_TEST_TIMEOUT (seconds, default 300).
# A missing prerequisite: SKIP, exit 77; with CI=true it fails.
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
MEM=256 MIB=128 LOCAL=64M
VM=metrics-$$

command -v promtool >/dev/null || missing "promtool not found (Debian package prometheus)"
command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64 not found"
[[ -x $BUILD/giantvm && -r $BUILD/libgiantvm-preload.so ]] || { bad "build: $BUILD/giantvm missing"; finish; }
TMP=$(mktemp -d /tmp/gvm-e2e-metrics.XXXXXX) || { bad "mktemp"; finish; }
EXPORTER_PID=
cleanup_more() {
    if [[ -n $EXPORTER_PID ]]; then
        kill -TERM "$EXPORTER_PID" 2>/dev/null
        wait "$EXPORTER_PID" 2>/dev/null
    fi
}
trap_cleanup
snapshot_build || { bad "build: cannot run $BUILD/giantvm (copied to $TMP/bin)"; finish; }
G=$TMP/bin/giantvm
gvm_guest_prepare 2>"$TMP/prepare.log" || { show_tail "$TMP/prepare.log"; missing "gvm_guest_prepare failed"; }
export GIANTVM_RUNTIME_DIR=$TMP/rt
mkdir -p "$GIANTVM_RUNTIME_DIR"

# GET /metrics on 127.0.0.1:PORT into FILE (body only); 0 if a 200 came.
scrape() {
    local port=$1 out=$2 resp
    resp=$(timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$port"' || exit 1
        printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' 2>/dev/null) || return 1
    [[ $resp == "HTTP/1.1 200 OK"* ]] || return 1
    printf '%s\n' "$resp" | tr -d '\r' | sed '1,/^$/d' >"$out"
}
# The value of series $2 in file $1 ("" when absent).
val() { awk -v s="$2" '$1 == s { print $2; exit }' "$1"; }
check_prom() { # FILE WHAT
    if promtool check metrics <"$1" >"$TMP/promtool.out" 2>&1; then ok "$2: promtool check metrics"; else
        bad "$2: promtool check metrics:"; show_tail "$TMP/promtool.out" 10
    fi
}

# --- the memory server, its metrics on a port of its choosing
"$G" memserver --listen 127.0.0.1:0 --port-file "$TMP/port" --metrics 127.0.0.1:0 >"$TMP/server.log" 2>&1 &
SERVER_PIDS+=($!)
wait_ports "$TMP/port" || { bad "memserver did not start"; show_tail "$TMP/server.log"; finish; }
echo "127.0.0.1:$(head -n1 "$TMP/port")" >"$TMP/pool"
MPORT=$(sed -n 's|.*metrics on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$TMP/server.log" | head -n1)
[[ -n $MPORT ]] || { bad "memserver: no 'metrics on' line"; show_tail "$TMP/server.log"; finish; }
scrape "$MPORT" "$TMP/ms-before.prom" && ok "memserver scraped before the run" || bad "memserver scrape before the run"
check_prom "$TMP/ms-before.prom" "memserver before"

# --- the exporter
"$G" stat --metrics 127.0.0.1:0 >"$TMP/exporter.log" 2>&1 &
EXPORTER_PID=$!
for ((t = 0; t < 50; t++)); do
    EPORT=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$TMP/exporter.log" | head -n1)
    [[ -n $EPORT ]] && break
    sleep 0.1
done
[[ -n $EPORT ]] || { bad "exporter: no address line"; show_tail "$TMP/exporter.log"; finish; }

# --- the guest, scraped while it runs
mapfile -t args < <(gvm_guest_qemu_args "$MEM" "$MIB" "gvm.seed=$SEED")
timeout -k 10 "$TIMEOUT" "$G" run --pool "$TMP/pool" --local-mem "$LOCAL" --vm-id "$VM" -- \
    qemu-system-x86_64 "${args[@]}" </dev/null >"$TMP/run.out" 2>"$TMP/run.err" &
RUN_PID=$!
n_vm=0 n_exp=0 n_only=0 stored_max=0
while kill -0 "$RUN_PID" 2>/dev/null; do
    # No VM named: the only one running is found (with no giantvm-qemu
    # directory on this host, too).
    "$G" stat --json 2>/dev/null | grep -q "^{\"vm\":\"$VM\"," && n_only=$((n_only + 1))
    if "$G" stat "$VM" --prometheus >"$TMP/vm.tmp" 2>/dev/null &&
        [[ $(val "$TMP/vm.tmp" "giantvm_vm_up{vm=\"$VM\"}") == 1 ]]; then
        n_vm=$((n_vm + 1))
        ((n_vm == 1)) && cp "$TMP/vm.tmp" "$TMP/vm-first.prom"
        cp "$TMP/vm.tmp" "$TMP/vm-last.prom"
    fi
    if scrape "$EPORT" "$TMP/exp.tmp" && [[ $(val "$TMP/exp.tmp" "giantvm_vm_up{vm=\"$VM\"}") == 1 ]]; then
        n_exp=$((n_exp + 1))
        cp "$TMP/exp.tmp" "$TMP/exp-last.prom"
    fi
    if scrape "$MPORT" "$TMP/ms.tmp"; then
        v=$(val "$TMP/ms.tmp" giantvm_memserver_stored_pages)
        [[ -n $v ]] && ((v > stored_max)) && stored_max=$v
    fi
    sleep 0.5
done
wait "$RUN_PID"
rc=$?
RUN_PID=
result=$(tr -d '\r' <"$TMP/run.out" | grep -m1 '^GIANTVM-RESULT ')
if ((rc == 0)) && [[ $result == *" verify=ok "* ]]; then ok "guest ran and verified its memory: $result"; else
    bad "giantvm run exit $rc, result '$result'"; show_tail "$TMP/run.err" 20
fi

# --- the VM's metrics while it ran
if ((n_vm >= 2)); then ok "giantvm stat $VM --prometheus answered $n_vm times while the guest ran"; else
    bad "giantvm stat $VM --prometheus answered $n_vm times (want >= 2)"; finish
fi
check_prom "$TMP/vm-last.prom" "stat --prometheus"
if ((n_only >= 1)); then ok "giantvm stat --json (no VM named) found $VM $n_only times"; else
    bad "giantvm stat --json (no VM named) never found $VM while it ran"; fi
f1=$(val "$TMP/vm-first.prom" "giantvm_vm_faults_total{vm=\"$VM\",kind=\"missing\"}")
f2=$(val "$TMP/vm-last.prom" "giantvm_vm_faults_total{vm=\"$VM\",kind=\"missing\"}")
[[ -n $f1 && -n $f2 ]] && ((f2 > f1)) && ok "missing faults grew while the guest ran: $f1 -> $f2" ||
    bad "missing faults did not grow: '$f1' -> '$f2'"
lat=$(val "$TMP/vm-last.prom" "giantvm_vm_fault_latency_seconds_count{vm=\"$VM\"}")
inf=$(val "$TMP/vm-last.prom" "giantvm_vm_fault_latency_seconds_bucket{vm=\"$VM\",le=\"+Inf\"}")
[[ -n $lat && $lat -gt 0 && $lat == "$inf" ]] && ok "fault latency histogram: $lat faults" ||
    bad "fault latency histogram: count '$lat', +Inf bucket '$inf'"
budget=$(val "$TMP/vm-last.prom" "giantvm_vm_budget_bytes{vm=\"$VM\"}")
[[ $budget == $((64 << 20)) ]] && ok "budget_bytes = --local-mem $LOCAL" || bad "budget_bytes '$budget', want $((64 << 20))"
ev=$(val "$TMP/vm-last.prom" "giantvm_vm_evicted_pages_total{vm=\"$VM\"}")
wb=$(val "$TMP/vm-last.prom" "giantvm_vm_written_back_pages_total{vm=\"$VM\"}")
[[ -n $ev && $ev -gt 0 && -n $wb && $wb -gt 0 ]] && ok "evictions $ev, write-backs $wb" ||
    bad "evictions '$ev', write-backs '$wb' (the guest exceeds its budget: want both > 0)"
node="127.0.0.1:$(head -n1 "$TMP/port")"
[[ $(val "$TMP/vm-last.prom" "giantvm_vm_node_up{vm=\"$VM\",node=\"$node\"}") == 1 ]] &&
    ok "node_up{node=\"$node\"} 1" || bad "node_up{node=\"$node\"} is not 1"
if ((n_exp >= 1)); then ok "exporter served the VM $n_exp times"; else bad "exporter never served the VM"; fi
[[ -s $TMP/exp-last.prom ]] && check_prom "$TMP/exp-last.prom" "exporter"

# --- the memory server after the run
scrape "$MPORT" "$TMP/ms-after.prom" && ok "memserver scraped after the run" || bad "memserver scrape after the run"
check_prom "$TMP/ms-after.prom" "memserver after"
w=$(val "$TMP/ms-after.prom" 'giantvm_memserver_requests_total{op="write"}')
r=$(val "$TMP/ms-after.prom" 'giantvm_memserver_requests_total{op="read"}')
[[ -n $w && $w -gt 0 && -n $r && $r -gt 0 ]] && ok "memserver requests: write $w, read $r" ||
    bad "memserver requests: write '$w', read '$r' (want both > 0)"
rb=$(val "$TMP/ms-after.prom" 'giantvm_memserver_received_bytes_total')
sent=$(val "$TMP/vm-last.prom" "giantvm_vm_sent_bytes_total{vm=\"$VM\"}")
[[ -n $rb && -n $sent && $sent -gt 0 && $rb -ge $sent ]] &&
    ok "memserver received $rb bytes >= the $sent page bytes the VM had sent" ||
    bad "memserver received '$rb' bytes, the VM sent '$sent'"
((stored_max > 0)) && ok "memserver stored pages peaked at $stored_max during the run" ||
    bad "memserver stored no pages during the run"
finish
