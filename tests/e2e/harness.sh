# tests/e2e/harness.sh: the helpers every e2e script shares. Source it; it
# sets pass=0 fail=0 SERVER_PIDS=() RUN_PID=.
#   ok/bad/note MSG   one "ok  MSG" / "FAIL MSG" / "# MSG" line (counted)
#   finish            print "N passed, M failed" and exit 0 iff nothing failed
#   missing MSG       a prerequisite of the machine (root, QEMU, a guest kernel,
#                     namespaces...) is missing, so the test cannot run: print
#                     "SKIP: MSG" and "N passed, M failed, 1 skipped", exit 77
#                     (tests/run.sh reports SKIPPED); under CI=true it is a
#                     FAIL and exits 1 (CI must run everything)
#   show_tail FILE [N]  the last N (25) non-blank lines of a log, "#   "-indented,
#                     CRs dropped and other control bytes (a guest console's
#                     escape sequences) shown as '.'
#   snapshot_build    copy $BUILD/giantvm and the preload library into $TMP/bin,
#                     so a concurrent `make` cannot swap them mid-run
#   make_token FILE   32 random hex chars, mode 600
#   wait_ports FILE...  wait up to ~10 s until every port file is non-empty;
#                     gives up early when a SERVER_PIDS process has exited.
#                     Sets PORTS_UP (how many are); 0 iff all are
#   start_memservers N [netns PORT]
#                     start N `$G memserver`s (pids appended to SERVER_PIDS),
#                     wait for their port files, write the pool file $POOL (one
#                     ADDR:PORT a line). Without netns: on 127.0.0.1:0 (no
#                     token), files $TMP/port.i and $TMP/server.i.log. With
#                     netns: server i in namespace i of gvm_netns_up, on
#                     GVM_NETNS_IP[i]:PORT with --token-file $TOKEN, files
#                     $TMP/port.PORT.i and $TMP/server.PORT.i.log. On failure:
#                     a FAIL line, the servers' log tails, return 1
#   stop_servers      TERM every pid in SERVER_PIDS, KILL after ~5 s each
#   stop_run          stop RUN_PID (a `timeout` leading its own process group
#                     with giantvm run and QEMU): TERM, which timeout forwards;
#                     after ~10 s KILL the whole group (a QEMU whose vCPU waits
#                     on a fault nobody serves does not exit on TERM)
#   cleanup           stop_run, stop_servers, gvm_netns_down (if netns.sh is
#                     sourced), the script's cleanup_more (if it defines one),
#                     then remove $TMP (kept, and said, with GVM_KEEP_TMP=1)
#   trap_cleanup      run cleanup on EXIT, and on INT/TERM before dying of the
#                     signal. gvm_netns_up installs its own traps: call
#                     trap_cleanup again after it (servers stop first)
# bench/swap_vs_giantvm.sh sources it for stop_servers / stop_run.
# shellcheck shell=bash disable=SC2034  # pass/fail are read by the caller
pass=0 fail=0
SERVER_PIDS=()
RUN_PID=
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
        bad "prerequisites: $* (CI=true: a test that cannot run fails)"
        finish
    fi
    echo "SKIP: $*"
    echo "$pass passed, $fail failed, 1 skipped"
    exit 77
}
show_tail() {
    LC_ALL=C tr -d '\r' <"$1" | LC_ALL=C tr -c '\11\12\40-\176' '.' | grep -v '^[[:space:]]*$' |
        tail -n "${2:-25}" | sed 's/^/#   /'
}
make_token() {
    (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1") && chmod 600 "$1"
}
wait_ports() {
    local t f p
    for ((t = 0; t < 100; t++)); do
        PORTS_UP=0
        for f in "$@"; do
            [[ -s $f ]] && PORTS_UP=$((PORTS_UP + 1))
        done
        ((PORTS_UP == $#)) && return 0
        for p in "${SERVER_PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null || return 1
        done
        sleep 0.1
    done
    return 1
}
start_memservers() {
    local n=$1 port=${3:-} i p files=() logs=() addr=()
    POOL=$TMP/pool${port:+.$port}
    for ((i = 1; i <= n; i++)); do
        files[i]=$TMP/port${port:+.$port}.$i logs[i]=$TMP/server${port:+.$port}.$i.log
        rm -f "${files[i]}"
        if [[ ${2:-} == netns ]]; then
            addr[i]=${GVM_NETNS_IP[i]}
            ip netns exec "${GVM_NETNS[i]}" "$G" memserver --listen "${addr[i]}:$port" \
                --token-file "$TOKEN" --port-file "${files[i]}" >"${logs[i]}" 2>&1 &
        else
            addr[i]=127.0.0.1
            "$G" memserver --listen 127.0.0.1:0 --port-file "${files[i]}" >"${logs[i]}" 2>&1 &
        fi
        SERVER_PIDS+=($!)
    done
    if wait_ports "${files[@]}"; then
        : >"$POOL"
        for ((i = 1; i <= n; i++)); do
            p=$(head -n1 "${files[i]}")
            if [[ ! $p =~ ^[0-9]+$ || $p == 0 || (-n $port && $p != "$port") ]]; then
                bad "memserver $i: port file says '$p'${port:+, want $port}"
                return 1
            fi
            echo "${addr[i]}:$p" >>"$POOL"
        done
        return 0
    fi
    bad "memservers${port:+ on port $port}: only $PORTS_UP of $n came up"
    for ((i = 1; i <= n; i++)); do show_tail "${logs[i]}" 5; done
    return 1
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
cleanup() {
    stop_run
    stop_servers
    if declare -F gvm_netns_down >/dev/null; then gvm_netns_down 2>/dev/null; fi
    if declare -F cleanup_more >/dev/null; then cleanup_more; fi
    if [[ -n ${TMP:-} && -d $TMP ]]; then
        if [[ -n ${GVM_KEEP_TMP:-} ]]; then echo "# logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
    fi
}
trap_cleanup() {
    trap cleanup EXIT
    trap 'cleanup; trap - INT; kill -INT $$' INT
    trap 'cleanup; trap - TERM; kill -TERM $$' TERM
}

# mirror_host_kvm DIR: a sysroot for $GIANTVM_SYSROOT that mirrors this host's
# KVM (DIR/dev/kvm -> /dev/kvm, DIR/sys/module/kvm_* for those loaded), and in
# host_kvm what detection must conclude, computed here independently:
# none (no /dev/kvm that opens), usable (kvm_intel/kvm_amd, no kvm_pvm), doubtful.
mirror_host_kvm() {
    local m
    mkdir -p "$1/dev" "$1/sys/module"
    [[ -e /dev/kvm ]] && ln -sf /dev/kvm "$1/dev/kvm"
    for m in kvm_pvm kvm_intel kvm_amd; do [[ -e /sys/module/$m ]] && mkdir -p "$1/sys/module/$m"; done
    host_kvm=none
    if [[ -e /dev/kvm ]] && (exec 3<>/dev/kvm) 2>/dev/null; then
        host_kvm=doubtful
        [[ ! -e /sys/module/kvm_pvm && (-e /sys/module/kvm_intel || -e /sys/module/kvm_amd) ]] && host_kvm=usable
    fi
    return 0
}
