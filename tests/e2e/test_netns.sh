#!/usr/bin/env bash
# tests/e2e/test_netns.sh — tests tests/e2e/netns.sh itself: 3 simulated
# hosts, ping + TCP both ways over each veth, isolation between them,
# cut/heal, teardown (explicit, and by the trap when a run is killed) leaving
# no namespace or veth behind.  Needs root.  All traffic stays inside this
# machine (10.213.x.0/24 on veths to namespaces created here).
# Closing line: "N passed, M failed".  Exit 0 iff nothing failed.
# Missing prerequisites: SKIP (exit 77) normally, FAIL when CI=true.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns.sh
. "$HERE/netns.sh"

# shellcheck source=harness.sh
. "$HERE/harness.sh"
check() { # check DESC CMD...
    local d=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi
}
((EUID == 0)) || missing "must run as root (network namespaces)"
_gvmn_need_ip || missing "iproute2 ('ip') unavailable"
command -v busybox >/dev/null || missing "busybox (for ping/nc) not installed"
command -v timeout >/dev/null || missing "timeout not installed"

PING="busybox ping -c 1 -W 2"
PORT=7077

# tcp_echo SERVER_NS_OR_EMPTY LISTEN_IP CLIENT_NS_OR_EMPTY : echo server on
# LISTEN_IP:PORT, one client connection, checks the echoed line.
tcp_echo() {
    local sns=$1 ip=$2 cns=$3 msg="gvm-$RANDOM-$$" got='' spid t
    local srv=(timeout 10 busybox nc -l -p "$PORT" -e /bin/cat)
    [[ -n $sns ]] && srv=(ip netns exec "$sns" "${srv[@]}")
    "${srv[@]}" >/dev/null 2>&1 &
    spid=$!
    local client='exec 3<>/dev/tcp/'"$ip"'/'"$PORT"' || exit 1; echo "$1" >&3; read -r -t 5 l <&3; echo "$l"'
    for ((t = 0; t < 50; t++)); do
        if [[ -n $cns ]]; then
            got=$(ip netns exec "$cns" timeout 5 bash -c "$client" _ "$msg" 2>/dev/null) && break
        else
            got=$(timeout 5 bash -c "$client" _ "$msg" 2>/dev/null) && break
        fi
        sleep 0.1
    done
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
    [[ $got == "$msg" ]]
}

mine() { # what of ours (this pid) is still on the machine
    gvm_netns_leftovers | grep -E "gvmtest-$$-|gvt$$[hn]"
}

# ---- up
if gvm_netns_up 3; then ok "gvm_netns_up 3"; else bad "gvm_netns_up 3"; finish; fi
echo "# hosts: ${GVM_NETNS_NAMES} / ${GVM_NETNS_IPS}"
check "GVM_NETNS_N is 3" test "$GVM_NETNS_N" = 3
for i in 1 2 3; do
    check "ns $i is named gvmtest-$$-$i" test "${GVM_NETNS[i]}" = "gvmtest-$$-$i"
    check "ns $i exists" bash -c "ip netns list | awk '{print \$1}' | grep -qx '${GVM_NETNS[i]}'"
    check "ns $i address ${GVM_NETNS_IP[i]} is 10.213.x.2" bash -c "[[ '${GVM_NETNS_IP[i]}' =~ ^10\.213\.[0-9]+\.2$ ]]"
    check "ns $i: lo is up" bash -c "ip netns exec '${GVM_NETNS[i]}' ip -o link show lo | grep -q 'UP'"
    check "ns $i: no default route (nothing reachable but the host)" \
        bash -c "! ip netns exec '${GVM_NETNS[i]}' ip route show default | grep -q ."
    check "host -> ns $i ping ${GVM_NETNS_IP[i]}" $PING "${GVM_NETNS_IP[i]}"
    check "ns $i -> host ping ${GVM_NETNS_HOST_IP[i]}" gvm_netns_exec "$i" $PING "${GVM_NETNS_HOST_IP[i]}"
    check "ns $i: ping own lo 127.0.0.1" gvm_netns_exec "$i" $PING 127.0.0.1
    check "TCP host -> server in ns $i" tcp_echo "${GVM_NETNS[i]}" "${GVM_NETNS_IP[i]}" ""
    check "TCP ns $i -> server on host" tcp_echo "" "${GVM_NETNS_HOST_IP[i]}" "${GVM_NETNS[i]}"
done
check "ns 1 cannot reach ns 2 (isolated)" bash -c "! ip netns exec '${GVM_NETNS[1]}' $PING '${GVM_NETNS_IP[2]}'"

# ---- cut / heal
check "gvm_netns_cut 2" gvm_netns_cut 2
check "after cut: host cannot ping ns 2" bash -c "! $PING '${GVM_NETNS_IP[2]}'"
check "after cut: ns 1 still reachable" $PING "${GVM_NETNS_IP[1]}"
check "gvm_netns_heal 2" gvm_netns_heal 2
check "after heal: host pings ns 2" $PING "${GVM_NETNS_IP[2]}"
check "after heal: TCP host -> ns 2" tcp_echo "${GVM_NETNS[2]}" "${GVM_NETNS_IP[2]}" ""
check "gvm_netns_cut 9 (out of range) fails" bash -c "! { . '$HERE/netns.sh'; gvm_netns_cut 9; }"
check "gvm_netns_up 0 fails" bash -c "! { . '$HERE/netns.sh'; gvm_netns_up 0; }"

# ---- concurrent second run gets disjoint names and subnets
other=$(bash -c ". '$HERE/netns.sh'; gvm_netns_up 2 || exit 1; echo \"\$GVM_NETNS_NAMES|\$GVM_NETNS_IPS\"; $PING \${GVM_NETNS_IP[2]} >/dev/null || exit 1" 2>&1)
rc=$?
check "a concurrent run (other pid) comes up and works: $other" test $rc = 0
o_ips=${other#*|}
clash=0
for ip in $o_ips; do [[ " $GVM_NETNS_IPS " == *" $ip "* ]] && clash=1; done
check "concurrent run used different subnets" test $clash = 0
check "our hosts still reachable after the other run's teardown" $PING "${GVM_NETNS_IP[3]}"

# ---- trap cleanup when a run is killed / exits without gvm_netns_down
# (sleep in the background + wait: bash runs traps only between commands)
bash -c ". '$HERE/netns.sh'; gvm_netns_up 2 || exit 1; sleep 30 & echo \$\$ \$! >/tmp/gvm-netns-child.$$; wait" &
cpid=$!
for ((t = 0; t < 100; t++)); do [[ -s /tmp/gvm-netns-child.$$ ]] && break; sleep 0.1; done
read -r child sleeper </tmp/gvm-netns-child.$$ 2>/dev/null
rm -f /tmp/gvm-netns-child.$$
created=0
[[ -n $child ]] && ip netns list | grep -q "gvmtest-$child-2" && created=1
check "killed run had created its namespaces" test $created = 1
kill -TERM "$cpid" 2>/dev/null
wait "$cpid" 2>/dev/null
[[ -n ${sleeper:-} ]] && kill "$sleeper" 2>/dev/null
check "TERM trap removed the killed run's namespaces and veths" \
    bash -c "[[ $created == 1 ]] && ! { . '$HERE/netns.sh'; gvm_netns_leftovers | grep -E 'gvmtest-$child-|gvt${child}[hn]'; }"
check "EXIT trap cleans up when a run just exits" \
    bash -c ". '$HERE/netns.sh'; p=\$(bash -c '. $HERE/netns.sh; gvm_netns_up 1 >/dev/null && echo \$\$'); [[ -n \$p ]] && ! gvm_netns_leftovers | grep -E \"gvmtest-\$p-|gvt\$p[hn]\""

# ---- teardown
check "gvm_netns_down" gvm_netns_down
left=$(mine)
if [[ -z $left ]]; then ok "teardown left no namespace or veth behind"; else bad "leftovers: $left"; fi
check "gvm_netns_down again is a no-op" gvm_netns_down
others=$(gvm_netns_leftovers)
if [[ -z $others ]]; then
    ok "no gvmtest-* namespace or gvt* veth on the machine"
else
    # other concurrent runs may legitimately own some; only report them
    echo "# note: present from other runs: $(echo $others)"
fi
finish
