#!/usr/bin/env bash
# shellcheck disable=SC2034  # this library sets variables for its callers
# tests/e2e/netns.sh — simulated hosts for e2e tests: network namespaces, each
# joined to the root namespace by its own veth pair.  Source it; needs root.
#
#   gvm_netns_up N
#       Creates N (1..250) namespaces named gvmtest-<pid>-<i>, i = 1..N, where
#       <pid> is the sourcing shell's $$ (unique per test run, so concurrent
#       runs don't collide).  Namespace i gets veth "gvt<pid>n<i>"
#       (≤14 chars: pid ≤ 7 digits) with 10.213.<i>.2/24 inside and its peer "gvt<..>h<i>"
#       with 10.213.<i>.1/24 in the root namespace; lo is up inside.
#       Addresses of the form 10.213.<i>.x exist only on this machine: each
#       /24 is a point-to-point link between the root ns and namespace i.
#       Two runs with overlapping i would route the same /24 twice; to avoid
#       that, N namespaces take a free block: GVM_NETNS_BASE (default: the
#       lowest free i offset whose 10.213.<i>.0/24 routes are all unused), so
#       subnet numbers are 10.213.(BASE+i).0/24.  Use the exported arrays below
#       rather than computing addresses.
#       Installs an EXIT/INT/TERM trap that calls gvm_netns_down (chaining any
#       EXIT trap already set).  A caller that sets its own EXIT trap AFTER
#       gvm_netns_up must call gvm_netns_down from it.  Concurrent runs
#       serialise on /run/gvm-netns.lock while allocating subnets.  Returns non-zero with a message
#       (and nothing left behind) on failure.
#       Exports (bash arrays are 1-based: index 0 is empty):
#         GVM_NETNS_N          N
#         GVM_NETNS[i]         namespace name              (gvmtest-<pid>-<i>)
#         GVM_NETNS_IP[i]      ns-side address, e.g. 10.213.1.2
#         GVM_NETNS_HOST_IP[i] root-side address, e.g. 10.213.1.1
#         GVM_NETNS_VETH_NS[i] / GVM_NETNS_VETH_HOST[i]  interface names
#         GVM_NETNS_NAMES      space-separated namespace names  (exported)
#         GVM_NETNS_IPS        space-separated ns-side addresses (exported)
#       (bash cannot export arrays; GVM_NETNS_N and the arrays are plain
#       shell variables of the shell that called gvm_netns_up.)
#       Run a command "on host i":  ip netns exec "${GVM_NETNS[i]}" CMD...
#       or gvm_netns_exec i CMD...
#
#   gvm_netns_down
#       Removes every namespace and veth this shell created (idempotent).
#   gvm_netns_cut I / gvm_netns_heal I
#       Sets both ends of host I's veth down / up (simulated network cut;
#       established TCP connections see no RST, packets just stop).
#   gvm_netns_exec I CMD...
#       ip netns exec "${GVM_NETNS[I]}" CMD...
#   gvm_netns_leftovers
#       Prints any gvmtest-* namespace or gvt* veth present on the machine
#       (from any run); prints nothing when clean.

_gvmn_err() { echo "netns.sh: ERROR: $*" >&2; }

_gvmn_need_ip() {
    if ! command -v ip >/dev/null 2>&1; then
        if ((EUID == 0)) && command -v apt-get >/dev/null; then
            echo "netns.sh: installing iproute2" >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >&2 ||
                { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >&2; }
        fi
        command -v ip >/dev/null 2>&1 || { _gvmn_err "'ip' (iproute2) not found and could not be installed"; return 1; }
    fi
    if ((EUID != 0)); then
        _gvmn_err "network namespaces need root (EUID=$EUID)"
        return 1
    fi
}

_gvmn_trap_installed=
_gvmn_install_trap() {
    [[ -n $_gvmn_trap_installed ]] && return 0
    local prev
    prev=$(trap -p EXIT)
    prev=${prev#trap -- \'}
    prev=${prev%\' EXIT}
    # shellcheck disable=SC2064
    trap "gvm_netns_down; ${prev:-:}" EXIT
    trap 'gvm_netns_down; trap - INT; kill -INT $$' INT
    trap 'gvm_netns_down; trap - TERM; kill -TERM $$' TERM
    _gvmn_trap_installed=1
}

# Is 10.213.<k>.0/24 (any k in [lo, hi]) already routed / addressed here?
_gvmn_block_free() {
    local lo=$1 hi=$2 routes k
    routes=$(ip -4 route show 2>/dev/null; ip -4 addr show 2>/dev/null)
    for ((k = lo; k <= hi; k++)); do
        grep -q "10\.213\.$k\." <<<"$routes" && return 1
    done
    return 0
}

gvm_netns_up() {
    local n=${1:-}
    if [[ ! $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 250)); then
        _gvmn_err "usage: gvm_netns_up N   (1 <= N <= 250, got '${n}')"
        return 1
    fi
    _gvmn_need_ip || return 1
    export -n GVM_NETNS_N 2>/dev/null
    if ((${GVM_NETNS_N:-0} > 0)); then
        _gvmn_err "gvm_netns_up: already up (${GVM_NETNS_N} namespaces); call gvm_netns_down first"
        return 1
    fi
    # Serialise subnet allocation + creation with concurrent runs.
    local lockfd
    exec {lockfd}>/run/gvm-netns.lock || { _gvmn_err "cannot open /run/gvm-netns.lock"; return 1; }
    if ! flock -w 60 "$lockfd"; then
        exec {lockfd}>&-
        _gvmn_err "timed out waiting for /run/gvm-netns.lock"
        return 1
    fi
    _gvmn_up_locked "$n"
    local rc=$?
    exec {lockfd}>&-
    return $rc
}

_gvmn_up_locked() {
    local n=$1
    local base=${GVM_NETNS_BASE:-}
    if [[ -z $base ]]; then
        for ((base = 0; base + n <= 250; base += n)); do
            _gvmn_block_free $((base + 1)) $((base + n)) && break
        done
        if ((base + n > 250)); then
            _gvmn_err "no free block of $n subnets in 10.213.1-250.0/24"
            return 1
        fi
    elif [[ ! $base =~ ^[0-9]+$ ]] || ((base + n > 250)); then
        _gvmn_err "GVM_NETNS_BASE=$base invalid for N=$n (need BASE+N <= 250)"
        return 1
    fi
    local tag=$$ i sub name vh vn
    GVM_NETNS=("") GVM_NETNS_IP=("") GVM_NETNS_HOST_IP=("")
    GVM_NETNS_VETH_NS=("") GVM_NETNS_VETH_HOST=("")
    GVM_NETNS_N=0
    _gvmn_install_trap
    for ((i = 1; i <= n; i++)); do
        sub=$((base + i))
        name=gvmtest-$$-$i
        vh=gvt${tag}h$i
        vn=gvt${tag}n$i
        if ip netns list | awk '{print $1}' | grep -qx "$name"; then
            _gvmn_err "namespace $name already exists (stale run with the same pid?)"
            gvm_netns_down
            return 1
        fi
        # record before creating, so gvm_netns_down cleans partial state
        GVM_NETNS[i]=$name
        GVM_NETNS_VETH_HOST[i]=$vh
        GVM_NETNS_VETH_NS[i]=$vn
        GVM_NETNS_IP[i]=10.213.$sub.2
        GVM_NETNS_HOST_IP[i]=10.213.$sub.1
        GVM_NETNS_N=$i
        local step
        for step in \
            "ip netns add $name" \
            "ip link add $vh type veth peer name $vn" \
            "ip link set $vn netns $name" \
            "ip addr add 10.213.$sub.1/24 dev $vh" \
            "ip link set $vh up" \
            "ip netns exec $name ip link set lo up" \
            "ip netns exec $name ip addr add 10.213.$sub.2/24 dev $vn" \
            "ip netns exec $name ip link set $vn up"; do
            local out
            if ! out=$($step 2>&1); then
                _gvmn_err "host $i: '$step' failed: $out"
                gvm_netns_down
                return 1
            fi
        done
    done
    GVM_NETNS_NAMES="${GVM_NETNS[*]:1}"
    GVM_NETNS_IPS="${GVM_NETNS_IP[*]:1}"
    # Only the space-separated lists are exported (for child processes); the
    # count and arrays stay in this shell so a child can run its own set.
    export GVM_NETNS_NAMES GVM_NETNS_IPS
    return 0
}

gvm_netns_down() {
    local i rc=0 n=${GVM_NETNS_N:-0}
    ((n > 0)) || return 0
    for ((i = n; i >= 1; i--)); do
        # Deleting the ns destroys its veth end, which destroys the pair.
        if [[ -n ${GVM_NETNS[i]:-} ]] && ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "${GVM_NETNS[i]}"; then
            # kill anything still running inside, or the ns may linger
            local pids
            pids=$(ip netns pids "${GVM_NETNS[i]}" 2>/dev/null)
            [[ -n $pids ]] && kill -9 $pids 2>/dev/null
            ip netns del "${GVM_NETNS[i]}" 2>/dev/null || { _gvmn_err "cannot delete namespace ${GVM_NETNS[i]}"; rc=1; }
        fi
        # The ns's deletion destroys the pair asynchronously: a veth still
        # listed may be going away as we delete it. An error counts only if
        # it is still there a second later.
        if [[ -n ${GVM_NETNS_VETH_HOST[i]:-} ]] && ip link show "${GVM_NETNS_VETH_HOST[i]}" >/dev/null 2>&1; then
            ip link del "${GVM_NETNS_VETH_HOST[i]}" 2>/dev/null || ! _gvmn_link_lingers "${GVM_NETNS_VETH_HOST[i]}" ||
                { _gvmn_err "cannot delete veth ${GVM_NETNS_VETH_HOST[i]}"; rc=1; }
        fi
    done
    GVM_NETNS=("") GVM_NETNS_IP=("") GVM_NETNS_HOST_IP=("")
    GVM_NETNS_VETH_NS=("") GVM_NETNS_VETH_HOST=("")
    GVM_NETNS_N=0 GVM_NETNS_NAMES='' GVM_NETNS_IPS=''
    return $rc
}

# True if link $1 still exists after up to a second.
_gvmn_link_lingers() {
    local t
    for ((t = 0; t < 10; t++)); do
        ip link show "$1" >/dev/null 2>&1 || return 1
        sleep 0.1
    done
    return 0
}

_gvmn_check_index() {
    local i=${1:-}
    if [[ ! $i =~ ^[0-9]+$ ]] || ((i < 1 || i > ${GVM_NETNS_N:-0})); then
        _gvmn_err "host index '$i' out of range 1..${GVM_NETNS_N:-0}"
        return 1
    fi
}

_gvmn_set_link() {
    local i=$1 state=$2 out
    _gvmn_check_index "$i" || return 1
    out=$(ip link set "${GVM_NETNS_VETH_HOST[i]}" "$state" 2>&1) ||
        { _gvmn_err "ip link set ${GVM_NETNS_VETH_HOST[i]} $state: $out"; return 1; }
    out=$(ip netns exec "${GVM_NETNS[i]}" ip link set "${GVM_NETNS_VETH_NS[i]}" "$state" 2>&1) ||
        { _gvmn_err "ip link set ${GVM_NETNS_VETH_NS[i]} $state in ${GVM_NETNS[i]}: $out"; return 1; }
}

gvm_netns_cut() { _gvmn_set_link "${1:-}" down; }

gvm_netns_heal() {
    _gvmn_set_link "${1:-}" up || return 1
    # Bringing a veth up re-adds its connected route; wait until both ends
    # report carrier so the caller can use the link immediately.
    local i=$1 t
    for ((t = 0; t < 50; t++)); do
        if [[ $(cat "/sys/class/net/${GVM_NETNS_VETH_HOST[i]}/carrier" 2>/dev/null) == 1 ]]; then
            return 0
        fi
        sleep 0.1
    done
    _gvmn_err "gvm_netns_heal $i: ${GVM_NETNS_VETH_HOST[i]} has no carrier after 5 s"
    return 1
}

gvm_netns_exec() {
    local i=${1:-}
    _gvmn_check_index "$i" || return 1
    shift
    ip netns exec "${GVM_NETNS[i]}" "$@"
}

gvm_netns_leftovers() {
    ip netns list 2>/dev/null | awk '$1 ~ /^gvmtest-/ { print "netns " $1 }'
    ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^gvt[0-9]+[hn][0-9]+(@|$)/ { sub(/@.*/, "", $2); print "link " $2 }'
}
