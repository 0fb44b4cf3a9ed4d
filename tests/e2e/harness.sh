# tests/e2e/harness.sh: the reporting and build-snapshot helpers every e2e
# script shares. Source it; it sets pass=0 fail=0.
#   ok/bad/note MSG   one "ok  MSG" / "FAIL MSG" / "# MSG" line (counted)
#   finish            print "N passed, M failed" and exit 0 iff nothing failed
#   snapshot_build    copy $BUILD/giantvm and the preload library into $TMP/bin,
#                     so a concurrent `make` cannot swap them mid-run
#   missing MSG       a prerequisite is missing: FAIL under CI=true (a test
#                     that cannot run fails), else SKIP and exit 0
#   stop_servers      TERM every pid in SERVER_PIDS, KILL after ~5 s each
#   stop_run          stop RUN_PID (a `timeout` leading its own process group
#                     with giantvm run and QEMU): TERM, which timeout forwards;
#                     after ~10 s KILL the whole group (a QEMU whose vCPU waits
#                     on a fault nobody serves does not exit on TERM)
# bench/swap_vs_giantvm.sh sources it for stop_servers / stop_run.
# shellcheck shell=bash disable=SC2034  # pass/fail are read by the caller
pass=0 fail=0
ok() { echo "ok  $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
note() { echo "# $*"; }
finish() {
    echo "$pass passed, $fail failed"
    ((fail == 0))
    exit $?
}
snapshot_build() {
    local try
    mkdir -p "$TMP/bin" || return 1
    for ((try = 0; try < 10; try++)); do
        if cp "$BUILD/giantvm" "$BUILD/libgiantvm-preload.so" "$TMP/bin/" 2>/dev/null &&
            "$TMP/bin/giantvm" --help >/dev/null 2>&1 &&
            [[ $(head -c4 "$TMP/bin/libgiantvm-preload.so" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
            return 0
        fi
        sleep 1
    done
    return 1
}
missing() {
    if [[ ${CI:-} == true ]]; then
        bad "prerequisites: $*"
        finish
    fi
    echo "SKIP: $*"
    echo "$pass passed, $fail failed, 1 skipped"
    exit 0
}
stop_servers() {
    local p t
    for p in "${SERVER_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in "${SERVER_PIDS[@]}"; do
        for ((t = 0; t < 50; t++)); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    SERVER_PIDS=()
}
stop_run() {
    if [[ -n ${RUN_PID:-} ]] && kill -0 "$RUN_PID" 2>/dev/null; then
        kill -TERM "$RUN_PID" 2>/dev/null
        local t
        for ((t = 0; t < 100; t++)); do
            kill -0 "$RUN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$RUN_PID" 2>/dev/null || kill -KILL "$RUN_PID" 2>/dev/null
    fi
    [[ -n ${RUN_PID:-} ]] && { wait "$RUN_PID"; } 2>/dev/null
    RUN_PID=
}
