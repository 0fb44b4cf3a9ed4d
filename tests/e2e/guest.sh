#!/usr/bin/env bash
# shellcheck disable=SC2034  # this library sets variables for its callers
# tests/e2e/guest.sh — build and cache the e2e test guest (Debian kernel +
# busybox initramfs running tests/e2e/workload.c), and describe how to boot it.
#
# Source it (`. tests/e2e/guest.sh`) or run it:
#   tests/e2e/guest.sh                    prepare, then print GVM_KERNEL/GVM_INITRD/GVM_WORKLOAD
#   tests/e2e/guest.sh args MEM MIB [..]  prepare, then print gvm_guest_qemu_args output
#   tests/e2e/guest.sh boot MEM MIB [..]  prepare, then boot once on plain QEMU (serial on stdout)
#   tests/e2e/guest.sh redis              prepare, then build the redis initramfs (GVM_INITRD_REDIS)
#
# Functions
#   gvm_guest_prepare
#       Needs root on Debian 12 the first time.  Installs, only if missing,
#       qemu-system-x86 busybox-static cpio gcc libc6-dev (one `apt-get update`
#       per shell at most, and only when something is missing).  Downloads the
#       package `linux-image-amd64` depends on (`apt-get download`, never
#       installed), `dpkg -x`es it into the cache and keeps boot/ only.  Builds
#       the workload (gcc -static -O2) and the initramfs (cpio newc + gzip);
#       both file names carry a hash of workload.c / the init script / busybox,
#       so editing either rebuilds.  Takes a lock on the cache (flock), so
#       concurrent callers are safe.  Prints each step's time to stderr.
#       Returns non-zero with a message on stderr on any failure.
#       Exports:
#         GVM_CACHE      cache dir (${GIANTVM_CACHE:-/var/cache/giantvm})
#         GVM_KERNEL     kernel to pass to -kernel: by default an uncompressed
#                        PVH vmlinux extracted (xz) from the package's vmlinuz,
#                        which boots ~3 s faster under TCG than the bzImage
#         GVM_VMLINUZ    the package's original /boot/vmlinuz-* (bzImage)
#         GVM_KERNEL_PKG the Debian package it came from, e.g. linux-image-6.1.0-56-amd64=6.1.192-2
#         GVM_INITRD     path of the initramfs (.cpio.gz)
#         GVM_WORKLOAD   path of the static workload binary; it also runs on the
#                        host: "$GVM_WORKLOAD" --expect MIB SEED prints the checksum
#       Environment knobs: GIANTVM_CACHE (cache dir),
#         GIANTVM_GUEST_KERNEL (use this kernel image as is, no download),
#         GIANTVM_GUEST_VMLINUZ=1 (pass the compressed bzImage as GVM_KERNEL).
#
#   gvm_guest_qemu_args MEM_MIB MIB [extra kernel args...]
#       Prints the QEMU arguments (after the program name), ONE PER LINE, for a
#       guest with MEM_MIB MiB of RAM whose workload touches MIB MiB.  Extra
#       args are appended to the kernel command line; the guest's /init reads
#         gvm.mib=N gvm.seed=S (default 1) gvm.threads=T (default 1)
#         gvm.passes=P (default 1) gvm.fault=OFF (workload --inject-fault)
#         gvm.rand=uniform|zipf gvm.ops=K gvm.expect=HEX: run `workload --rand`
#           (random read-modify-write over gvm.mib MiB) instead
#         gvm.job=NAME: run /bin/job-NAME instead (an extra initramfs layer,
#           see gvm_guest_prepare_redis); every gvm.K=V is exported as GVM_K=V
#         gvm.runs=N gvm.pause=S: run the workload (or job) N times, S seconds
#           apart (each run: seed + its index); the first failure's status
#         gvm.balloon=1: load the guest kernel's virtio-balloon driver (its
#           modules are in the initramfs when the kernel came from the Debian
#           package) and add QEMU's -device virtio-balloon-pci with
#           free-page-reporting=on: the guest hands memory it frees back to
#           QEMU (in 2 MiB blocks, ~2 s after they are free). /init prints
#           "GIANTVM-BALLOON ok" or "GIANTVM-BALLOON FAIL <why>".
#       Use it as:
#         mapfile -t args < <(gvm_guest_qemu_args 512 256 gvm.seed=3)
#         timeout 300 qemu-system-x86_64 "${args[@]}" </dev/null
#       Requires GVM_KERNEL and GVM_INITRD (set by gvm_guest_prepare).
#
#   gvm_guest_boot LOG TIMEOUT_S MEM_MIB MIB [extra kernel args...]
#       Boots once: runs `timeout TIMEOUT_S ${GVM_BOOT_PREFIX[@]}
#       qemu-system-x86_64 <args>` with stdin from /dev/null and the serial
#       console written to LOG.  GVM_BOOT_PREFIX is an optional bash array
#       (e.g. (build/giantvm run --)) put in front of qemu-system-x86_64.
#       Sets GVM_RESULT (the GIANTVM-RESULT line, or empty) and GVM_BOOT_S
#       (wall seconds, 3 decimals).  Returns qemu's (or timeout's: 124) exit
#       status, or 3 if it exited 0 but printed no GIANTVM-RESULT line.
#
# Guest RAM: kernel + initramfs + page tables use ~80 MiB of it, so give
# MEM_MIB >= MIB + 96 (256 MiB workload: OOM-killed at -m 336, ok at 352);
# the PVH vmlinux needs -m >= 96 (at -m 64 it hangs silently before any output).
# The kernel boots with no modules (8250 console, initramfs, devtmpfs, ACPI
# power-off are built in; the virtio modules are loaded only for
# gvm.balloon=1); gvm.* words are ignored by the kernel (unknown
# module parameters) and read by /init from /proc/cmdline.
#
# Guest serial output also carries "GIANTVM-BOOT uptime=<s>" (kernel uptime
# when /init starts) and "GIANTVM-EXIT rc=<n>" (the workload's exit status).

# ---------------------------------------------------------------- internals

GVM_E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

_gvm_now() { date +%s.%N; }
_gvm_elapsed() { awk -v a="$1" -v b="$(_gvm_now)" 'BEGIN { printf "%.2f", b - a }'; }
_gvm_log() { echo "guest.sh: $*" >&2; }
_gvm_err() { echo "guest.sh: ERROR: $*" >&2; }

# _gvm_step NAME CMD... : run CMD, print its duration to stderr.
_gvm_step() {
    local name=$1 t0 rc
    shift
    t0=$(_gvm_now)
    "$@"
    rc=$?
    if ((rc)); then
        _gvm_log "step $name: $(_gvm_elapsed "$t0")s (FAILED, rc=$rc)"
    else
        _gvm_log "step $name: $(_gvm_elapsed "$t0")s"
    fi
    return $rc
}

_gvm_apt_updated=
_gvm_apt_update_once() {
    [[ -n $_gvm_apt_updated ]] && return 0
    _gvm_log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || {
        _gvm_err "apt-get update failed"
        return 1
    }
    _gvm_apt_updated=1
}

_gvm_ensure_packages() {
    local p st missing=() want=(qemu-system-x86 busybox-static cpio gcc libc6-dev)
    local -A ok=()
    while read -r p st; do
        [[ $st == "install ok installed" ]] && ok[${p%%:*}]=1
    done < <(dpkg-query -W -f='${Package} ${Status}\n' "${want[@]}" 2>/dev/null)
    for p in "${want[@]}"; do
        [[ -n ${ok[$p]:-} ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        _gvm_err "missing packages (${missing[*]}) and not root: install them first"
        return 1
    fi
    _gvm_apt_update_once || return 1
    _gvm_log "apt-get install -y ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 || {
        _gvm_err "apt-get install ${missing[*]} failed"
        return 1
    }
    local b
    for b in qemu-system-x86_64 busybox cpio gcc gzip; do
        command -v "$b" >/dev/null || { _gvm_err "$b still not found after install"; return 1; }
    done
}

# Print "pkg=version" of the package linux-image-amd64 (candidate version)
# depends on, e.g. linux-image-6.1.0-56-amd64=6.1.192-2.  apt-cache takes ~1 s
# here, so the answer is memoised against the apt lists' signature.
_gvm_kernel_dep() {
    local sig memo=$GVM_CACHE/kernel/.resolved spec msig
    sig=$(stat -c '%n %Y %s' /var/lib/apt/lists/*_Packages* /var/lib/dpkg/status 2>/dev/null | sha256sum | cut -c1-16)
    if [[ -r $memo ]] && read -r msig spec <"$memo" && [[ $msig == "$sig" && -n $spec ]]; then
        echo "$spec"
        return 0
    fi
    spec=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | awk '
        $1 == "Depends:" {
            sub(/^Depends: */, "")
            n = split($0, d, / *, */)
            for (i = 1; i <= n; i++)
                if (match(d[i], /^linux-image-[^ ]+ \(= [^)]+\)/)) {
                    split(d[i], f, /[ ()=]+/)
                    print f[1] "=" f[2]
                    exit
                }
        }')
    if [[ -z $spec ]]; then
        # no versioned dependency: fall back to apt-cache depends + candidate
        local dep ver
        dep=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
        [[ -n $dep ]] || return 1
        ver=$(apt-cache policy "$dep" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
        [[ -n $ver && $ver != "(none)" ]] || return 1
        spec=$dep=$ver
    fi
    echo "$sig $spec" >"$memo.$$" 2>/dev/null && mv -f "$memo.$$" "$memo"
    echo "$spec"
}

_gvm_ensure_kernel() {
    if [[ -n ${GIANTVM_GUEST_KERNEL:-} ]]; then
        [[ -r $GIANTVM_GUEST_KERNEL ]] || { _gvm_err "GIANTVM_GUEST_KERNEL=$GIANTVM_GUEST_KERNEL not readable"; return 1; }
        GVM_KERNEL=$GIANTVM_GUEST_KERNEL
        GVM_VMLINUZ=$GIANTVM_GUEST_KERNEL
        GVM_KERNEL_PKG=custom
        return 0
    fi
    local spec
    spec=$(_gvm_kernel_dep)
    if [[ -z $spec ]]; then
        # No package lists (fresh machine) or an old list: update once and retry.
        if ((EUID == 0)) && _gvm_apt_update_once; then
            spec=$(_gvm_kernel_dep)
        fi
    fi
    if [[ -z $spec ]]; then
        # Offline / no apt: fall back to the newest kernel already cached.
        local k
        k=$(ls -1d "$GVM_CACHE"/kernel/linux-image-*/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
        if [[ -n $k ]]; then
            _gvm_log "cannot resolve linux-image-amd64's dependency; using cached $k"
            GVM_VMLINUZ=$k
            GVM_KERNEL_PKG=$(basename "$(dirname "$(dirname "$k")")")
            _gvm_select_kernel
        fi
        _gvm_err "cannot resolve the package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
        return 1
    fi
    local dir=$GVM_CACHE/kernel/${spec/=/_}
    local k
    k=$(ls -1 "$dir"/boot/vmlinuz-* 2>/dev/null | head -n1)
    if [[ -z $k ]]; then
        local tmp
        tmp=$(mktemp -d "$GVM_CACHE/kernel/.dl.XXXXXX") || return 1
        chmod 755 "$tmp"
        # let apt download sandboxed as _apt (avoids a warning)
        id _apt >/dev/null 2>&1 && chown _apt "$tmp"
        _gvm_log "apt-get download $spec"
        if ! (cd "$tmp" && apt-get download -q "$spec" >&2 2>&1); then
            # The candidate may be gone from the mirror: refresh the lists once.
            local ok=
            if ((EUID == 0)) && [[ -z $_gvm_apt_updated ]] && _gvm_apt_update_once &&
                spec=$(_gvm_kernel_dep); then
                dir=$GVM_CACHE/kernel/${spec/=/_}
                _gvm_log "apt-get download $spec (after apt-get update)"
                (cd "$tmp" && apt-get download -q "$spec" >&2 2>&1) && ok=1
            fi
            if [[ -z $ok ]]; then
                rm -rf "$tmp"
                _gvm_err "apt-get download $spec failed"
                return 1
            fi
        fi
        local deb
        deb=$(ls -1 "$tmp"/*.deb 2>/dev/null | head -n1)
        if [[ -z $deb ]] || ! dpkg -x "$deb" "$tmp/root"; then
            rm -rf "$tmp"
            _gvm_err "dpkg -x of the kernel package failed"
            return 1
        fi
        # Keep boot/ (vmlinuz, config, System.map) and the .deb; the ~400 MB of
        # modules are not needed: the guest boots without any module.
        rm -rf "$dir"
        mkdir -p "$dir"
        mv "$tmp/root/boot" "$dir/boot" && mv "$deb" "$dir/" || {
            rm -rf "$tmp"
            _gvm_err "cannot move the kernel into $dir"
            return 1
        }
        rm -rf "$tmp"
        k=$(ls -1 "$dir"/boot/vmlinuz-* 2>/dev/null | head -n1)
        [[ -n $k ]] || { _gvm_err "no boot/vmlinuz-* in $spec"; return 1; }
    fi
    GVM_VMLINUZ=$k
    GVM_KERNEL_PKG=$spec
    _gvm_select_kernel
}

# GVM_KERNEL := an uncompressed vmlinux (ELF with a PVH entry note) extracted
# from GVM_VMLINUZ, which QEMU boots directly: that skips the in-guest XZ
# decompression, ~3 s of the ~7 s boot+256 MiB run under TCG.  Falls back to
# the bzImage if extraction fails or GIANTVM_GUEST_VMLINUZ=1.
_gvm_select_kernel() {
    GVM_KERNEL=$GVM_VMLINUZ
    [[ ${GIANTVM_GUEST_VMLINUZ:-0} == 1 ]] && return 0
    local out=${GVM_VMLINUZ%/*}/vmlinux-pvh-${GVM_VMLINUZ##*/vmlinuz-}
    if [[ ! -s $out ]]; then
        if ! command -v xz >/dev/null || ! command -v readelf >/dev/null; then
            _gvm_log "xz or readelf missing: booting the compressed $GVM_VMLINUZ"
            return 0
        fi
        local off
        for off in $(LC_ALL=C grep -obUa $'\xfd7zXZ' "$GVM_VMLINUZ" | cut -d: -f1); do
            tail -c +$((off + 1)) "$GVM_VMLINUZ" | xz -dcq >"$out.tmp.$$" 2>/dev/null
            # XEN_ELFNOTE_PHYS32_ENTRY (0x12) is the PVH entry QEMU needs
            if [[ $(head -c4 "$out.tmp.$$" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] &&
                readelf -n "$out.tmp.$$" 2>/dev/null | grep -q '(0x00000012)'; then
                mv -f "$out.tmp.$$" "$out"
                break
            fi
        done
        rm -f "$out.tmp.$$"
        if [[ ! -s $out ]]; then
            _gvm_log "no PVH vmlinux inside $GVM_VMLINUZ: booting it compressed"
            return 0
        fi
    fi
    GVM_KERNEL=$out
}

# The guest's /init.  Keep it self-contained: busybox applets only.
_gvm_init_script() {
    cat <<'EOF'
#!/bin/sh
# giantvm e2e guest init (generated by tests/e2e/guest.sh)
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "GIANTVM-BOOT uptime=$(cut -d' ' -f1 /proc/uptime)"
mib=64 seed=1 threads=1 passes=1 fault=
for w in $(cat /proc/cmdline); do
    case $w in
    gvm.mib=*) mib=${w#gvm.mib=} ;;
    gvm.seed=*) seed=${w#gvm.seed=} ;;
    gvm.threads=*) threads=${w#gvm.threads=} ;;
    gvm.passes=*) passes=${w#gvm.passes=} ;;
    gvm.fault=*) fault=${w#gvm.fault=} ;;
    esac
    # every gvm.K=V is also exported as GVM_K=V (for /bin/job-*)
    case $w in
    gvm.*=*) k=${w%%=*}; export "GVM_${k#gvm.}=${w#*=}" ;;
    esac
done
if [ "${GVM_balloon:-}" = 1 ]; then
    why=
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon; do
        [ -r /lib/modules/$m.ko ] || { why="no_$m.ko_in_the_initramfs"; break; }
        insmod /lib/modules/$m.ko || { why="insmod_${m}_failed"; break; }
    done
    [ -z "$why" ] && ! ls /sys/bus/virtio/drivers/virtio_balloon/virtio* >/dev/null 2>&1 && why=no_balloon_device
    echo "GIANTVM-BALLOON ${why:+FAIL }${why:-ok}"
fi
run_once() {
    if [ -n "${GVM_job:-}" ]; then
        # a job another initramfs layer brings (e.g. gvm_guest_prepare_redis)
        if [ -x "/bin/job-$GVM_job" ]; then
            "/bin/job-$GVM_job"
        else
            echo "GIANTVM-RESULT job=$GVM_job verify=FAIL reason=no_/bin/job-$GVM_job"
            false
        fi
    elif [ -n "${GVM_rand:-}" ]; then
        set -- --rand "$GVM_rand" --mib "$mib" --seed "$1" --ops "${GVM_ops:-1000000}"
        [ -n "${GVM_expect:-}" ] && set -- "$@" --expect "$GVM_expect"
        /bin/workload "$@"
    else
        set -- --mib "$mib" --seed "$1" --threads "$threads" --passes "$passes"
        [ -n "$fault" ] && set -- "$@" --inject-fault "$fault"
        /bin/workload "$@"
    fi
}
i=0 rc=0
while [ $i -lt "${GVM_runs:-1}" ]; do
    [ $i -gt 0 ] && sleep "${GVM_pause:-0}"
    run_once $((seed + i))
    r=$?
    [ $rc -eq 0 ] && rc=$r
    i=$((i + 1))
done
echo "GIANTVM-EXIT rc=$rc"
sync
poweroff -f
# poweroff should not return; if it does, panic=-1 + -no-reboot ends QEMU.
exit $rc
EOF
}

_gvm_ensure_workload() {
    local h out
    h=$(sha256sum <"$GVM_E2E_DIR/workload.c" | cut -c1-16) || return 1
    out=$GVM_CACHE/workload-$h
    if [[ ! -x $out ]]; then
        gcc -static -O2 -Wall -Wextra -pthread -o "$out.tmp.$$" "$GVM_E2E_DIR/workload.c" || {
            rm -f "$out.tmp.$$"
            _gvm_err "cannot compile $GVM_E2E_DIR/workload.c"
            return 1
        }
        mv -f "$out.tmp.$$" "$out"
    fi
    GVM_WORKLOAD=$out
}

# The virtio-balloon driver and what it needs, from the kernel's .deb (kept in
# the cache next to boot/): prints the directory holding the .ko files, or
# fails (a custom kernel, or no .deb: gvm.balloon=1 then reports FAIL).
_gvm_balloon_modules() {
    local kdir=${GVM_VMLINUZ%/boot/*} deb dir
    dir=$kdir/virtio-modules
    if [[ ! -s $dir/virtio_balloon.ko ]]; then
        deb=$(ls -1 "$kdir"/*.deb 2>/dev/null | head -n1)
        [[ -n $deb ]] || return 1
        rm -rf "$dir.tmp.$$" && mkdir -p "$dir.tmp.$$" || return 1
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir.tmp.$$" --wildcards \
            './lib/modules/*/kernel/drivers/virtio/virtio.ko' './lib/modules/*/kernel/drivers/virtio/virtio_ring.ko' \
            './lib/modules/*/kernel/drivers/virtio/virtio_pci*.ko' './lib/modules/*/kernel/drivers/virtio/virtio_balloon.ko' ||
            { rm -rf "$dir.tmp.$$"; return 1; }
        mkdir -p "$dir.tmp.$$/flat" && find "$dir.tmp.$$/lib" -name '*.ko' -exec mv {} "$dir.tmp.$$/flat/" \; &&
            [[ -s $dir.tmp.$$/flat/virtio_balloon.ko ]] || { rm -rf "$dir.tmp.$$"; return 1; }
        rm -rf "$dir" && mv "$dir.tmp.$$/flat" "$dir" && rm -rf "$dir.tmp.$$" || return 1
    fi
    echo "$dir"
}

_gvm_ensure_initrd() {
    local bb h out stage a
    bb=$(command -v busybox) || { _gvm_err "busybox not found"; return 1; }
    if ldd "$bb" >/dev/null 2>&1; then
        # `ldd` fails ("not a dynamic executable") on static binaries.
        _gvm_err "$bb is not statically linked (need busybox-static)"
        return 1
    fi
    local mods
    mods=$(_gvm_balloon_modules) || mods=
    h=$({ _gvm_init_script; sha256sum <"$GVM_WORKLOAD"; sha256sum <"$bb"; [[ -z $mods ]] || cat "$mods"/*.ko; } |
        sha256sum | cut -c1-16)
    out=$GVM_CACHE/initrd-$h.cpio.gz
    if [[ ! -s $out ]]; then
        stage=$(mktemp -d "$GVM_CACHE/.initrd.XXXXXX") || return 1
        mkdir -p "$stage"/{bin,dev,proc,sys,tmp,root} &&
            cp "$bb" "$stage/bin/busybox" &&
            cp "$GVM_WORKLOAD" "$stage/bin/workload" &&
            _gvm_init_script >"$stage/init" &&
            chmod 755 "$stage/init" "$stage/bin/busybox" "$stage/bin/workload" &&
            { [[ -z $mods ]] || { mkdir -p "$stage/lib/modules" && cp "$mods"/*.ko "$stage/lib/modules/"; }; } || {
            rm -rf "$stage"
            _gvm_err "cannot stage the initramfs"
            return 1
        }
        for a in $("$bb" --list); do
            [[ $a == busybox ]] || ln -sf busybox "$stage/bin/$a"
        done
        ln -s bin "$stage/sbin"
        # /dev/console is also in the kernel's built-in initramfs, but having
        # it here makes /init's stdio independent of that.
        mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
        mknod -m 666 "$stage/dev/null" c 1 3 2>/dev/null || true
        if ! (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
            cpio --quiet -o -H newc -R 0:0 | gzip -9n >"$out.tmp.$$"); then
            rm -rf "$stage" "$out.tmp.$$"
            _gvm_err "cpio/gzip of the initramfs failed"
            return 1
        fi
        rm -rf "$stage"
        mv -f "$out.tmp.$$" "$out"
    fi
    GVM_INITRD=$out
}

# ---------------------------------------------------------------- public API

gvm_guest_prepare() {
    local t0 rc=0
    t0=$(_gvm_now)
    GVM_CACHE=${GIANTVM_CACHE:-/var/cache/giantvm}
    case $GVM_CACHE in
    /*) ;;
    *) GVM_CACHE=$PWD/$GVM_CACHE ;;
    esac
    local repo
    repo=$(cd "$GVM_E2E_DIR/../.." && pwd)
    case $GVM_CACHE/ in
    "$repo"/*) _gvm_err "GIANTVM_CACHE=$GVM_CACHE is inside the repo ($repo); use a directory outside it"; return 1 ;;
    esac
    _gvm_step packages _gvm_ensure_packages || return 1
    mkdir -p "$GVM_CACHE/kernel" || { _gvm_err "cannot create $GVM_CACHE"; return 1; }
    command -v flock >/dev/null || { _gvm_err "flock (util-linux) not found"; return 1; }
    # Serialise concurrent prepares on the cache (lock released when fd 9 closes).
    {
        if ! flock -w 900 9; then
            _gvm_err "cannot lock $GVM_CACHE/.lock within 900 s"
            rc=1
        else
            _gvm_step kernel _gvm_ensure_kernel &&
                _gvm_step workload _gvm_ensure_workload &&
                _gvm_step initrd _gvm_ensure_initrd || rc=1
        fi
    } 9>"$GVM_CACHE/.lock" || rc=1
    ((rc == 0)) || return 1
    export GVM_CACHE GVM_KERNEL GVM_VMLINUZ GVM_KERNEL_PKG GVM_INITRD GVM_WORKLOAD
    _gvm_log "prepared in $(_gvm_elapsed "$t0")s: kernel=$GVM_KERNEL ($GVM_KERNEL_PKG) initrd=$GVM_INITRD ($(stat -c %s "$GVM_INITRD") bytes)"
}

# The redis layer's job (/bin/job-redis), run by /init for gvm.job=redis.
_gvm_redis_job() {
    cat <<'EOF'
#!/bin/sh
# giantvm e2e redis job (generated by tests/e2e/guest.sh): redis-server on a
# Unix socket, loaded and queried at random by `workload --redis`, which
# checks every answer and prints the GIANTVM-RESULT line.
keys=${GVM_keys:-100000} value=${GVM_value:-1000} ops=${GVM_ops:-100000}
dist=${GVM_dist:-uniform} seed=${GVM_seed:-1} depth=${GVM_depth:-16}
sock=/tmp/redis.sock
redis-server --port 0 --unixsocket $sock --save '' --appendonly no --dir /tmp \
    --logfile /tmp/redis.log --databases 1 &
i=0
while [ ! -S $sock ] && [ $i -lt 600 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ ! -S $sock ]; then
    echo "GIANTVM-RESULT mode=redis verify=FAIL reason=redis-server_did_not_start"
    cat /tmp/redis.log
    exit 1
fi
echo "GIANTVM-REDIS $(redis-server --version)"
/bin/workload --redis $sock --dist "$dist" --keys "$keys" --value "$value" --ops "$ops" \
    --seed "$seed" --depth "$depth"
rc=$?
echo "GIANTVM-REDIS $(redis-cli -s $sock info memory | tr -d '\r' |
    grep -E '^(used_memory|used_memory_rss|used_memory_peak|mem_fragmentation_ratio):' | tr '\n' ' ')"
redis-cli -s $sock shutdown nosave >/dev/null 2>&1
exit $rc
EOF
}

# gvm_guest_prepare_redis: gvm_guest_prepare, then GVM_INITRD_REDIS = the
# e2e initramfs with a second cpio layer appended (the kernel unpacks
# concatenated archives in order; this one is not compressed, which boots
# ~5 s faster under TCG than gzip) holding Debian's redis-server and
# redis-cli (package redis-tools, installed if missing: it ships no
# service), the shared libraries ldd lists for them, and /bin/job-redis.
# Boot it with gvm.job=redis gvm.keys=K gvm.value=BYTES gvm.ops=Q
# gvm.dist=uniform|zipf gvm.depth=P gvm.seed=S (GVM_INITRD=$GVM_INITRD_REDIS
# before gvm_guest_qemu_args).  Cached like the rest, keyed by the hash of
# the binaries, libraries, job script and base initramfs.
gvm_guest_prepare_redis() {
    [[ -n ${GVM_INITRD:-} && -n ${GVM_CACHE:-} ]] || gvm_guest_prepare || return 1
    local srv cli
    if ! srv=$(command -v redis-check-rdb) || ! cli=$(command -v redis-cli); then
        ((EUID == 0)) || { _gvm_err "redis-tools is not installed and not root"; return 1; }
        _gvm_apt_update_once || return 1
        _gvm_log "apt-get install -y redis-tools"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-tools >&2 ||
            { _gvm_err "apt-get install redis-tools failed"; return 1; }
        if ! srv=$(command -v redis-check-rdb) || ! cli=$(command -v redis-cli); then
            _gvm_err "redis-check-rdb / redis-cli not found after installing redis-tools"
            return 1
        fi
    fi
    local libs h out layer stage l rc=0
    # redis-check-rdb is the server binary (it dispatches on argv[0])
    libs=$(ldd "$srv" "$cli" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
    [[ -n $libs ]] || { _gvm_err "ldd $srv $cli listed no libraries"; return 1; }
    # shellcheck disable=SC2086  # $libs: one path per word
    h=$({ sha256sum "$srv" "$cli" $libs | cut -c1-64; _gvm_redis_job; } | sha256sum | cut -c1-16)
    layer=$GVM_CACHE/redis-layer-$h.cpio
    out=$GVM_CACHE/initrd-redis-$h-$(basename "$GVM_INITRD" .cpio.gz | sed 's/^initrd-//').cpio.gz
    {
        flock -w 900 9 || { _gvm_err "cannot lock $GVM_CACHE/.lock"; return 1; }
        if [[ ! -s $layer ]]; then
            stage=$(mktemp -d "$GVM_CACHE/.redis.XXXXXX") || return 1
            mkdir -p "$stage/bin" && cp "$srv" "$stage/bin/redis-server" &&
                cp "$cli" "$stage/bin/redis-cli" && _gvm_redis_job >"$stage/bin/job-redis" &&
                chmod 755 "$stage/bin/redis-server" "$stage/bin/redis-cli" "$stage/bin/job-redis" || rc=1
            for l in $libs; do
                ((rc == 0)) || break
                mkdir -p "$stage$(dirname "$l")" && cp -L "$l" "$stage$l" || rc=1
            done
            if ((rc == 0)) && ! (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
                cpio --quiet -o -H newc -R 0:0 >"$layer.tmp.$$"); then
                rc=1
            fi
            rm -rf "$stage"
            if ((rc == 0)); then
                mv -f "$layer.tmp.$$" "$layer"
            else
                rm -f "$layer.tmp.$$"
                _gvm_err "cannot build the redis initramfs layer"
                return 1
            fi
        fi
        if [[ ! -s $out ]]; then
            # the layer starts 4-byte aligned (the kernel skips the zeros)
            { cat "$GVM_INITRD" && head -c $(((4 - $(stat -c %s "$GVM_INITRD") % 4) % 4)) /dev/zero &&
                cat "$layer"; } >"$out.tmp.$$" && mv -f "$out.tmp.$$" "$out" ||
                { rm -f "$out.tmp.$$"; _gvm_err "cannot write $out"; return 1; }
        fi
    } 9>"$GVM_CACHE/.lock" || return 1
    GVM_INITRD_REDIS=$out
    export GVM_INITRD_REDIS
    _gvm_log "redis initramfs: $out ($(stat -c %s "$out") bytes; $("$srv" --version | cut -d' ' -f1-3))"
}

gvm_guest_qemu_args() {
    if (($# < 2)); then
        _gvm_err "usage: gvm_guest_qemu_args MEM_MIB MIB [extra kernel args...]"
        return 1
    fi
    local mem=$1 mib=$2
    shift 2
    if [[ ! $mem =~ ^[0-9]+$ || ! $mib =~ ^[0-9]+$ ]]; then
        _gvm_err "gvm_guest_qemu_args: MEM_MIB and MIB must be integers (got '$mem' '$mib')"
        return 1
    fi
    if [[ -z ${GVM_KERNEL:-} || -z ${GVM_INITRD:-} ]]; then
        _gvm_err "gvm_guest_qemu_args: GVM_KERNEL/GVM_INITRD unset; call gvm_guest_prepare first"
        return 1
    fi
    local append="console=ttyS0 quiet panic=-1 gvm.mib=$mib" balloon=()
    (($#)) && append+=" $*"
    [[ " $* " == *" gvm.balloon=1 "* ]] && balloon=(-device virtio-balloon-pci,free-page-reporting=on)
    printf '%s\n' \
        -machine pc -accel tcg -cpu max -smp 1 -m "$mem" \
        -nographic -no-reboot -nic none ${balloon[@]+"${balloon[@]}"} \
        -kernel "$GVM_KERNEL" -initrd "$GVM_INITRD" \
        -append "$append"
}

gvm_guest_boot() {
    if (($# < 4)); then
        _gvm_err "usage: gvm_guest_boot LOG TIMEOUT_S MEM_MIB MIB [extra kernel args...]"
        return 1
    fi
    local log=$1 to=$2 t0 rc args=()
    shift 2
    mapfile -t args < <(gvm_guest_qemu_args "$@") || return 1
    ((${#args[@]})) || return 1
    GVM_RESULT=
    GVM_BOOT_S=
    t0=$(_gvm_now)
    timeout -k 10 "$to" ${GVM_BOOT_PREFIX[@]+"${GVM_BOOT_PREFIX[@]}"} qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1
    rc=$?
    GVM_BOOT_S=$(awk -v a="$t0" -v b="$(_gvm_now)" 'BEGIN { printf "%.3f", b - a }')
    GVM_RESULT=$(tr -d '\r' <"$log" | grep -m1 '^GIANTVM-RESULT ' || true)
    if ((rc == 0)) && [[ -z $GVM_RESULT ]]; then
        rc=3
    fi
    return $rc
}

# ---------------------------------------------------------------- runnable

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -u
    cmd=${1:-prepare}
    (($#)) && shift
    gvm_guest_prepare || exit 1
    case $cmd in
    prepare)
        echo "GVM_KERNEL=$GVM_KERNEL"
        echo "GVM_VMLINUZ=$GVM_VMLINUZ"
        echo "GVM_KERNEL_PKG=$GVM_KERNEL_PKG"
        echo "GVM_INITRD=$GVM_INITRD"
        echo "GVM_WORKLOAD=$GVM_WORKLOAD"
        ;;
    redis)
        gvm_guest_prepare_redis || exit 1
        echo "GVM_INITRD_REDIS=$GVM_INITRD_REDIS"
        ;;
    args) gvm_guest_qemu_args "$@" ;;
    boot)
        mapfile -t a < <(gvm_guest_qemu_args "$@") && ((${#a[@]})) || exit 1
        exec qemu-system-x86_64 "${a[@]}" </dev/null
        ;;
    *)
        echo "usage: $0 [prepare | redis | args MEM MIB [kargs..] | boot MEM MIB [kargs..]]" >&2
        exit 2
        ;;
    esac
fi
