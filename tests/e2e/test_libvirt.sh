#!/usr/bin/env bash
# tests/e2e/test_libvirt.sh: a pooled VM run by a real libvirtd (Debian's
# libvirt-daemon-system, libvirt-clients; .ci/run installs them), through the
# giantvm-qemu emulator wrapper and the documented domain
# (dist/libvirt/domain.xml, docs/LIBVIRT.md), QEMU running as libvirt-qemu
# with the least privilege the docs give: /dev/userfaultfd in
# cgroup_device_acl and group kvm mode 0660 on the device, the token owned by
# libvirt-qemu, no user="root".
#   boot       `virsh create` boots the test guest; its workload writes and
#              verifies 128 MiB with the RAM in a pool of 2 loopback memory
#              servers with a token (local-mem 64M: pages go out and come back)
#   delayed    the first attach delayed 3 s (GIANTVM_TEST_ATTACH_DELAY_MS via
#              <qemu:env>): libvirt's own `cont` still finds every RAM block
#              attached, with 0 pages resident before the attach (nothing
#              ran on local RAM); the guest verifies
#   stat       `giantvm stat NAME` (root) finds the VM by its libvirt name
#   destroy    `virsh destroy` leaves no QEMU; SIGKILL of the domain's PID
#              (giantvm-qemu exec'd into QEMU) leaves no QEMU either
#   refusals   a JSON -device {"driver":"vfio-pci"} and -overcommit mem-lock=on
#              (what <memoryBacking><locked/> gives) are refused, naming why;
#              libvirt's probing is passed through (else nothing boots)
# Starts virtlogd and libvirtd by hand (no systemd) and stops them; restores
# /etc/libvirt/qemu.conf and /dev/userfaultfd's owner and mode; installs
# nothing. Root only; SKIP (77) when something is missing, a FAIL under CI=true.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${BUILD:-build}
[[ $BUILD == /* ]] || BUILD=$REPO/$BUILD
# shellcheck source=harness.sh
. "$HERE/harness.sh"
# shellcheck source=guest.sh
. "$HERE/guest.sh"

((EUID == 0)) || missing "needs root (libvirtd, /dev/userfaultfd)"
for c in virsh libvirtd virtlogd qemu-system-x86_64; do
    command -v "$c" >/dev/null 2>&1 || missing "$c not found (apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86)"
done
id libvirt-qemu >/dev/null 2>&1 || missing "no libvirt-qemu user (libvirt-daemon-system)"
[[ -c /dev/userfaultfd ]] || missing "no /dev/userfaultfd"
if pgrep -x libvirtd >/dev/null || [[ -S /run/libvirt/libvirt-sock ]]; then
    missing "a libvirtd is running already; this test starts its own"
fi
if [[ ! -x $BUILD/giantvm || ! -r $BUILD/libgiantvm-preload.so ]]; then
    bad "build: $BUILD/giantvm or $BUILD/libgiantvm-preload.so missing (run 'make -j2' first)"
    finish
fi
gvm_guest_prepare >/dev/null || missing "gvm_guest_prepare failed"

RUN_DIR=/run/giantvm-qemu
QCONF=/etc/libvirt/qemu.conf
TMP=$(mktemp -d /tmp/gvm-e2e-libvirt.XXXXXX) || { bad "mktemp"; finish; }
chmod 755 "$TMP"
UFFD_MODE=$(stat -c '%a %u %g' /dev/userfaultfd)
QCONF_SAVED='' RUN_DIR_MADE='' LIBVIRTD_PID='' VIRTLOGD_PID='' REAPER_PID='' VMS=()
cleanup_more() {
    local d p t
    if [[ -n $LIBVIRTD_PID ]]; then
        for d in "${VMS[@]}"; do timeout 20 virsh -q destroy "$d" >/dev/null 2>&1; done
        kill -TERM "$LIBVIRTD_PID" 2>/dev/null
    fi
    [[ -n $VIRTLOGD_PID ]] && kill -TERM "$VIRTLOGD_PID" 2>/dev/null
    for p in $LIBVIRTD_PID $VIRTLOGD_PID; do
        for ((t = 0; t < 50; t++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    # the capability-probing QEMU libvirtd may have left (-daemonize, as libvirt-qemu)
    for p in $(pgrep -u libvirt-qemu -f 'qemu-system-x86_64 -S -no-user-config -nodefaults -nographic -machine none' 2>/dev/null); do
        [[ $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) == *"/var/lib/libvirt/qemu/qmp-"* ]] && kill -KILL "$p"
    done
    if [[ -n $REAPER_PID ]]; then
        sleep 0.5 # let it reap what just ended
        kill -TERM "$REAPER_PID" 2>/dev/null
        for ((t = 0; t < 30; t++)); do kill -0 "$REAPER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$REAPER_PID" 2>/dev/null
        wait "$REAPER_PID" 2>/dev/null
    fi
    [[ -n $QCONF_SAVED ]] && cp -p "$QCONF_SAVED" "$QCONF"
    read -r m u g <<<"$UFFD_MODE"
    chown "$u:$g" /dev/userfaultfd && chmod "$m" /dev/userfaultfd
    for d in "${VMS[@]}"; do rm -f "$RUN_DIR/$d.log" "$RUN_DIR/$d.sock"; done
    [[ -n $RUN_DIR_MADE ]] && rmdir "$RUN_DIR" 2>/dev/null
}
trap_cleanup
G=$TMP/bin/giantvm
snapshot_build || { bad "cannot copy the build"; finish; }
ln -s giantvm "$TMP/bin/giantvm-qemu"
cp "$GVM_KERNEL" "$TMP/vmlinux" && cp "$GVM_INITRD" "$TMP/initrd.cpio.gz" || { bad "copy the guest"; finish; }
chmod -R a+rX "$TMP"

# --- the host, as docs/LIBVIRT.md says
QCONF_SAVED=$TMP/qemu.conf.orig
cp -p "$QCONF" "$QCONF_SAVED" || { bad "save $QCONF"; finish; }
cat "$REPO/dist/libvirt/qemu.conf.snippet" >>"$QCONF"
chgrp kvm /dev/userfaultfd && chmod 0660 /dev/userfaultfd
if [[ ! -d $RUN_DIR ]]; then
    install -d -m 2770 -g kvm "$RUN_DIR" && RUN_DIR_MADE=1
fi

# --- the pool: 2 loopback memory servers with a token readable by libvirt-qemu only
TOKEN=$TMP/token
make_token "$TOKEN" && chown libvirt-qemu "$TOKEN"
for i in 1 2; do
    "$G" memserver --listen 127.0.0.1:0 --token-file "$TOKEN" --port-file "$TMP/port.$i" >"$TMP/server.$i.log" 2>&1 &
    SERVER_PIDS+=($!)
done
wait_ports "$TMP/port.1" "$TMP/port.2" || { bad "memservers did not come up"; finish; }
POOL=$TMP/pool.conf
printf '127.0.0.1:%s\n' "$(cat "$TMP/port.1")" "$(cat "$TMP/port.2")" >"$POOL"
WCONF=$TMP/giantvm-qemu.conf
printf 'pool = %s\ntoken-file = %s\nlocal-mem = 64M\n' "$POOL" "$TOKEN" >"$WCONF"
chmod 644 "$POOL" "$WCONF"

# --- libvirt, by hand. The daemons and QEMU (libvirt double-forks it) are
# orphans; PID 1 in a container or sandbox may never reap them, and libvirt
# counts a zombie QEMU as alive (virsh destroy then waits). So they run under
# a child-subreaper (prctl(PR_SET_CHILD_SUBREAPER), perl-base is Essential)
# that reaps them.
case $(uname -m) in
x86_64) NR_PRCTL=157 ;;
aarch64) NR_PRCTL=167 ;;
*) NR_PRCTL= ;;
esac
if [[ -n $NR_PRCTL ]]; then
    perl -e 'syscall('"$NR_PRCTL"', 36, 1, 0, 0, 0) == 0 or die "prctl(PR_SET_CHILD_SUBREAPER): $!\n";
        $SIG{TERM} = sub { exit 0 };
        for my $c (@ARGV) { my $p = fork(); if (!$p) { exec("/bin/sh", "-c", $c); exit 127 }
            waitpid($p, 0); exit 1 if $? }
        open(my $f, ">", "'"$TMP/reaper.ready"'"); close($f);
        while (1) { sleep 1 if waitpid(-1, 0) <= 0 }' \
        "virtlogd -d -p $TMP/virtlogd.pid" "libvirtd -d -p $TMP/libvirtd.pid" &
    REAPER_PID=$!
    for ((t = 0; t < 100; t++)); do [[ -e $TMP/reaper.ready ]] && break; kill -0 "$REAPER_PID" 2>/dev/null || break; sleep 0.1; done
    [[ -e $TMP/reaper.ready ]] || { bad "virtlogd -d / libvirtd -d under the reaper failed"; finish; }
else
    note "no subreaper on $(uname -m): zombies depend on PID 1"
    virtlogd -d -p "$TMP/virtlogd.pid" || missing "virtlogd -d failed"
    libvirtd -d -p "$TMP/libvirtd.pid" || { bad "libvirtd -d failed"; finish; }
fi
for ((t = 0; t < 50; t++)); do [[ -s $TMP/virtlogd.pid ]] && break; sleep 0.1; done
VIRTLOGD_PID=$(cat "$TMP/virtlogd.pid" 2>/dev/null)
for ((t = 0; t < 100; t++)); do [[ -s $TMP/libvirtd.pid ]] && virsh -q version >/dev/null 2>&1 && break; sleep 0.1; done
LIBVIRTD_PID=$(cat "$TMP/libvirtd.pid" 2>/dev/null)
virsh -q version >/dev/null 2>&1 || { bad "libvirtd does not answer"; finish; }
ok "libvirtd $(virsh -q version 2>/dev/null | awk '/libvirt/ {print $NF; exit}') up (pid $LIBVIRTD_PID)"

# domain_xml NAME CMDLINE [QEMU_EXTRA_XML] [MEMBACKING_XML]: the documented
# domain, its paths pointed at this test's copies.
domain_xml() {
    local name=$1 cmdline=$2 extra=${3:-} mb=${4:-} xml
    xml=$TMP/$name.xml
    sed -e "s|<name>giantvm-demo</name>|<name>$name</name>|" \
        -e "s|/var/cache/giantvm/vmlinux|$TMP/vmlinux|" \
        -e "s|/var/cache/giantvm/initrd.cpio.gz|$TMP/initrd.cpio.gz|" \
        -e "s|<cmdline>.*</cmdline>|<cmdline>$cmdline</cmdline>|" \
        -e "s|/usr/local/bin/giantvm-qemu|$TMP/bin/giantvm-qemu|" \
        -e "s|/var/log/libvirt/qemu/giantvm-demo.console.log|$TMP/$name.console|" \
        -e "s|^<domain type='qemu'>|<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>|" \
        "$REPO/dist/libvirt/domain.xml" >"$xml"
    # <qemu:env>: libvirt clears QEMU's environment; this is how a test names its config
    sed -i "s|</domain>|  <qemu:commandline>\n    <qemu:env name='GIANTVM_QEMU_CONF' value='$WCONF'/>\n$extra  </qemu:commandline>\n</domain>|" "$xml"
    [[ -n $mb ]] && sed -i "s|  <vcpu>|  $mb\n  <vcpu>|" "$xml"
    echo "$xml"
}
qemu_pid() { cat "/run/libvirt/qemu/$1.pid" 2>/dev/null; }
# wait_gone NAME SECS: the domain has ended (the guest powered off)
wait_gone() {
    local t
    for ((t = 0; t < $2 * 10; t++)); do
        virsh -q domstate "$1" >/dev/null 2>&1 || return 0
        sleep 0.1
    done
    return 1
}
# check_boot NAME LABEL: the guest verified its memory, every RAM block was
# attached with 0 pages resident before, and the engine moved pages.
check_boot() {
    local name=$1 L=$2 res log=$RUN_DIR/$1.log n0 nall eng
    res=$(tr -d '\r' <"$TMP/$name.console" 2>/dev/null | grep -m1 '^GIANTVM-RESULT ')
    if [[ $res == *" verify=ok "* ]]; then ok "$L: guest verified its memory: ${res#GIANTVM-RESULT }"; else
        bad "$L: no verify=ok: '$res'"
        show_tail "$TMP/$name.console" 10
        show_tail "$log" 10
        show_tail "/var/log/libvirt/qemu/$name.log" 10
    fi
    nall=$(grep -c 'attached as QEMU mapped it' "$log" 2>/dev/null)
    n0=$(grep -c 'attached as QEMU mapped it (0 pages resident before)' "$log" 2>/dev/null)
    if ((nall >= 1 && n0 == nall)); then ok "$L: $nall RAM blocks attached as QEMU mapped them, 0 pages resident before each"; else
        bad "$L: attach lines $nall, with 0 resident $n0"
        show_tail "$log" 10
    fi
    eng=$(grep -m1 'engine at exit:' "$log")
    local f pf wb
    f=$(sed -n 's/.*"faults":\([0-9]*\).*/\1/p' <<<"$eng")
    pf=$(sed -n 's/.*"pages_fetched":\([0-9]*\).*/\1/p' <<<"$eng")
    wb=$(sed -n 's/.*"writebacks":\([0-9]*\).*/\1/p' <<<"$eng")
    if [[ ${f:-0} -gt 1000 && ${pf:-0} -gt 0 && ${wb:-0} -gt 0 ]]; then
        ok "$L: engine: $f faults, $pf pages fetched from the pool, $wb write-backs"
    else
        bad "$L: engine at exit: faults '${f:-}' pages_fetched '${pf:-}' writebacks '${wb:-}': ${eng:0:300}"
    fi
}

# --- boot: the documented domain, RAM in the pool
N=gvm-lv-boot VMS+=("$N")
xml=$(domain_xml "$N" "console=ttyS0 quiet panic=-1 gvm.mib=128 gvm.seed=3")
t0=$(date +%s.%N)
if out=$(virsh create "$xml" 2>&1); then
    pid=$(qemu_pid "$N")
    user=$(ps -o user= -p "$pid" 2>/dev/null)
    comm=$(cat "/proc/$pid/comm" 2>/dev/null)
    [[ $user == libvirt-qemu && $comm == qemu-system-x86 ]] &&
        ok "boot: virsh create; the domain's PID $pid is QEMU ($comm), user $user" ||
        bad "boot: domain PID '$pid' is '$comm' as '$user' (want qemu-system-x86 as libvirt-qemu)"
    wait_gone "$N" 150 || bad "boot: the guest did not power off in 150 s"
    check_boot "$N" boot
    note "boot: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s from virsh create to power-off"
    grep -q '^\[GiantVM\] giantvm-qemu: VM' "/var/log/libvirt/qemu/$N.log" &&
        ok "boot: the domain log has giantvm-qemu's one line, naming its log" ||
        bad "boot: no [GiantVM] line in /var/log/libvirt/qemu/$N.log"
    # after libvirt's header (ending with QEMU's command line), QEMU's own output
    if sed -n '/^-msg timestamp=on$/,$p' "/var/log/libvirt/qemu/$N.log" | grep -qE '^giantvm|preload:'; then
        bad "boot: giantvm wrote to QEMU's stderr: $(grep -E '^giantvm|preload:' "/var/log/libvirt/qemu/$N.log" | head -n 3)"
    else
        ok "boot: nothing of giantvm on QEMU's stderr (the domain log)"
    fi
else
    bad "boot: virsh create failed: $out"
    show_tail "/var/log/libvirt/qemu/$N.log" 15
fi

# --- delayed attach: libvirt's cont cannot overtake it
N=gvm-lv-delay VMS+=("$N")
xml=$(domain_xml "$N" "console=ttyS0 quiet panic=-1 gvm.mib=128 gvm.seed=4" \
    "    <qemu:env name='GIANTVM_TEST_ATTACH_DELAY_MS' value='3000'/>\n")
t0=$(date +%s.%N)
virsh create "$xml" >"$TMP/$N.create" 2>&1 &
cpid=$!
# Inside the delay (the preload has said so, no block attached yet): QEMU
# runs, but no vCPU thread exists (libvirt names them, debug-threads=on), so
# nothing can run the guest, whatever libvirt sends.
inside=
for ((t = 0; t < 200; t++)); do
    if grep -q 'test: delaying the attach' "$RUN_DIR/$N.log" 2>/dev/null; then
        pid=$(pgrep -u libvirt-qemu -f "guest=$N,")
        threads=$(cat /proc/"$pid"/task/*/comm 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ')
        attached=$(grep -c 'attached as QEMU mapped it' "$RUN_DIR/$N.log")
        inside="pid $pid, attached blocks $attached, threads:$threads"
        if [[ -n $pid && $attached == 0 && -n $threads && $threads != *"CPU "* ]]; then
            ok "delayed: during the delay QEMU (pid $pid) has no vCPU thread and no block attached yet"
        else
            bad "delayed: during the delay: $inside"
        fi
        break
    fi
    sleep 0.05
done
[[ -n $inside ]] || bad "delayed: never saw the delay begin in $RUN_DIR/$N.log"
if wait "$cpid"; then
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    pid=$(qemu_pid "$N")
    vcpus=$(grep -l '^CPU ' /proc/"$pid"/task/*/comm 2>/dev/null | wc -l)
    note "delayed: virsh create returned after ${secs} s; now $vcpus vCPU thread(s)"
    grep -q 'test: delaying the attach by 3000 ms' "$RUN_DIR/$N.log" && ok "delayed: the attach was delayed 3000 ms" ||
        bad "delayed: no delay line in $RUN_DIR/$N.log"
    wait_gone "$N" 150 || bad "delayed: the guest did not power off in 150 s"
    check_boot "$N" delayed
else
    bad "delayed: virsh create failed: $(cat "$TMP/$N.create")"
    show_tail "/var/log/libvirt/qemu/$N.log" 15
fi

# --- stat and destroy: a guest that keeps running
long_cmdline="console=ttyS0 quiet panic=-1 gvm.mib=16 gvm.passes=1000000 gvm.seed=5"
N=gvm-lv-long VMS+=("$N")
xml=$(domain_xml "$N" "$long_cmdline")
if out=$(virsh create "$xml" 2>&1); then
    pid=$(qemu_pid "$N")
    sout=
    for ((t = 0; t < 50; t++)); do
        sout=$("$G" stat "$N" --json 2>&1) && [[ $sout == '{'* ]] && break
        sleep 0.2
    done
    [[ $sout == *"\"vm\":\"$N\""* ]] && ok "stat: \`giantvm stat $N\` finds the libvirt domain's engine" ||
        bad "stat: giantvm stat $N: ${sout:0:300}"
    sout=$("$G" stat "$N" --count 1 2>&1) && ok "stat: table: $(tail -n1 <<<"$sout" | tr -s ' ')" ||
        bad "stat: giantvm stat $N --count 1: $sout"
    out=$(virsh destroy "$N" 2>&1) || bad "destroy: $out"
    for ((t = 0; t < 50; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null && ! pgrep -f "guest=$N," >/dev/null; then
        ok "destroy: virsh destroy left no QEMU (pid $pid gone)"
    else
        bad "destroy: QEMU pid '$pid' still there: $(pgrep -af "guest=$N," | head -n 2)"
    fi
else
    bad "stat/destroy: virsh create failed: $out"
    show_tail "/var/log/libvirt/qemu/$N.log" 15
fi
N=gvm-lv-kill VMS+=("$N")
xml=$(domain_xml "$N" "$long_cmdline")
if out=$(virsh create "$xml" 2>&1); then
    pid=$(qemu_pid "$N")
    kill -KILL "$pid"
    for ((t = 0; t < 50; t++)); do pgrep -f "guest=$N," >/dev/null || break; sleep 0.1; done
    if ! pgrep -f "guest=$N," >/dev/null && ! pgrep -f "giantvm-qemu.*$N" >/dev/null; then
        ok "SIGKILL: kill -KILL of the domain's PID $pid (giantvm-qemu exec'd into QEMU) left no QEMU"
    else
        bad "SIGKILL: left: $(pgrep -af "guest=$N," | head -n 2)"
    fi
    wait_gone "$N" 20 && ok "SIGKILL: libvirt saw the domain end" || bad "SIGKILL: libvirt still lists $N"
else
    bad "SIGKILL: virsh create failed: $out"
fi

# --- refusals
N=gvm-lv-vfio VMS+=("$N")
xml=$(domain_xml "$N" "console=ttyS0" \
    "    <qemu:arg value='-device'/>\n    <qemu:arg value='{\"driver\":\"vfio-pci\",\"host\":\"0000:00:1f.7\",\"id\":\"hostdev9\"}'/>\n")
if out=$(virsh create "$xml" 2>&1); then
    bad "vfio: the JSON vfio-pci device was accepted"
    virsh -q destroy "$N" >/dev/null 2>&1
elif grep -q 'giantvm-qemu: a vfio device pins all guest RAM' <<<"$out"; then
    ok "vfio: -device '{\"driver\":\"vfio-pci\",...}' refused: $(grep -o 'giantvm-qemu: a vfio[^:]*' <<<"$out" | head -n1)"
else
    bad "vfio: failed, but not with giantvm-qemu's reason: $out"
fi
# <memoryBacking><locked/> makes libvirt raise RLIMIT_MEMLOCK, which this
# sandbox forbids before QEMU starts; its QEMU argument is passed instead.
N=gvm-lv-locked VMS+=("$N")
xml=$(domain_xml "$N" "console=ttyS0" "    <qemu:arg value='-overcommit'/>\n    <qemu:arg value='mem-lock=on'/>\n")
if out=$(virsh create "$xml" 2>&1); then
    bad "locked: -overcommit mem-lock=on was accepted"
    virsh -q destroy "$N" >/dev/null 2>&1
elif grep -q 'giantvm-qemu: -overcommit mem-lock=on' <<<"$out"; then
    ok "locked: -overcommit mem-lock=on (<memoryBacking><locked/>) refused"
else
    bad "locked: failed, but not with giantvm-qemu's reason: $out"
fi
finish
