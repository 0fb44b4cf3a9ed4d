# bench/swap_lib.sh: memory cgroup, zram swap and swap file helpers for the
# benches that compare giantvm with kernel swap (swap_vs_giantvm.sh,
# random_vs_swap.sh).  Source it; needs root.  Callers set:
#   SWAPLIB_NAME  prefix of warnings (the script's name)
#   cg_mem        memory limit cg_up gives the cgroup (e.g. 384M)
#   zram_size     disksize zram_up gives the device (e.g. 2G)
# and initialise CG='' ZDEV='' ZN='' Z_HOTADDED=0 Z_SWAPON=0 SWAPFILE=''
# SF_SWAPON=0 before installing their cleanup trap.
#   cg_find / cg_up / cgroup_down   CG: a v2 (memory.max, swap.max=max) or v1
#                                   (limit_in_bytes, memsw unlimited) cgroup
#   cg_peak                         its peak usage in bytes (v2 memory.peak,
#                                   v1 memory.max_usage_in_bytes), or '?'
#   zram_up / zram_down             a hot-added zram swap at priority 32767
#   swapfile_make PATH SIZE / swapfile_on / swapfile_off / swapfile_rm
#                                   a swap file (fallocate, else dd) at
#                                   priority 32767
#   bench_pool_up MIB prealloc|lazy two loopback `$G memserver`s (pids on
#                                   SERVER_PIDS, --capacity MIB --prealloc when
#                                   prealloc), the pool file $TMP/pool.conf;
#                                   sets SRV_OPTS (the servers' extra options)
# The *_up / *_make functions print why and return 1 on failure.
# shellcheck shell=bash disable=SC2015,SC2154  # A && B || C is intended; cg_mem, zram_size: the caller's

zram_down() {
    if ((Z_SWAPON)); then
        swapoff "$ZDEV" 2>/dev/null || echo "$SWAPLIB_NAME: WARNING: swapoff $ZDEV failed" >&2
        Z_SWAPON=0
    fi
    if [[ -n $ZN ]]; then
        echo 1 >"/sys/block/zram$ZN/reset" 2>/dev/null
        if ((Z_HOTADDED)); then
            echo "$ZN" >/sys/class/zram-control/hot_remove 2>/dev/null ||
                echo "$SWAPLIB_NAME: WARNING: cannot hot_remove zram$ZN" >&2
        fi
    fi
    ZN='' ZDEV='' Z_HOTADDED=0
}
cgroup_down() {
    [[ -n $CG && -d $CG ]] || { CG=''; return 0; }
    local t
    for ((t = 0; t < 50; t++)); do
        rmdir "$CG" 2>/dev/null && break
        sleep 0.1
    done
    [[ -d $CG ]] && echo "$SWAPLIB_NAME: WARNING: cannot remove $CG" >&2
    CG=''
}
# cg_find: sets CG_KIND (v2|v1) and CG_ROOT, the hierarchy with a memory
# controller: a cgroup2 mount listing "memory", else a v1 "memory" mount.
cg_find() {
    local mnt fs opts rest
    CG_KIND='' CG_ROOT=''
    while read -r _ mnt fs opts rest; do
        if [[ $fs == cgroup2 ]] && grep -qw memory "$mnt/cgroup.controllers" 2>/dev/null; then
            CG_KIND=v2 CG_ROOT=$mnt
            return 0
        fi
    done </proc/mounts
    while read -r _ mnt fs opts rest; do
        if [[ $fs == cgroup && ,$opts, == *,memory,* ]]; then
            CG_KIND=v1 CG_ROOT=$mnt
            return 0
        fi
    done </proc/mounts
    return 1
}

# cg_up: creates CG with the memory limit; prints why and returns 1 on failure.
cg_up() {
    cg_find || { echo "no cgroup hierarchy with the memory controller (checked /proc/mounts)"; return 1; }
    CG=$CG_ROOT/gvmbench-$$
    if [[ $CG_KIND == v2 ]]; then
        if ! grep -qw memory "$CG_ROOT/cgroup.subtree_control" 2>/dev/null; then
            echo +memory >"$CG_ROOT/cgroup.subtree_control" 2>/dev/null ||
                { echo "cannot enable +memory in $CG_ROOT/cgroup.subtree_control"; CG=''; return 1; }
        fi
        mkdir "$CG" 2>/dev/null || { echo "mkdir $CG failed"; CG=''; return 1; }
        echo "$cg_mem" >"$CG/memory.max" 2>/dev/null || { echo "cannot write memory.max=$cg_mem in $CG"; return 1; }
        if [[ -e $CG/memory.swap.max ]]; then
            echo max >"$CG/memory.swap.max" || { echo "cannot write memory.swap.max=max in $CG"; return 1; }
        fi
        CG_DESC="cgroup v2 $CG memory.max=$(cat "$CG/memory.max") swap.max=$(cat "$CG/memory.swap.max" 2>/dev/null || echo n/a)"
    else
        mkdir "$CG" 2>/dev/null || { echo "mkdir $CG failed"; CG=''; return 1; }
        echo "$cg_mem" >"$CG/memory.limit_in_bytes" 2>/dev/null ||
            { echo "cannot write memory.limit_in_bytes=$cg_mem in $CG"; return 1; }
        if [[ -e $CG/memory.memsw.limit_in_bytes ]]; then
            echo -1 >"$CG/memory.memsw.limit_in_bytes" 2>/dev/null ||
                { echo "cannot write memory.memsw.limit_in_bytes=-1 in $CG"; return 1; }
        fi
        CG_DESC="cgroup v1 (no v2 memory controller here) $CG memory.limit_in_bytes=$(cat "$CG/memory.limit_in_bytes")"
        [[ -e $CG/memory.swappiness ]] && CG_DESC+=" swappiness=$(cat "$CG/memory.swappiness")"
    fi
    return 0
}

# zram_up: a zram swap device; prints why and returns 1 on failure.
zram_up() {
    local n a algs
    if [[ ! -e /sys/class/zram-control/hot_add ]]; then
        if command -v modprobe >/dev/null; then
            modprobe zram num_devices=1 2>&1 || { echo "modprobe zram failed"; return 1; }
        elif [[ ! -e /sys/block/zram0 ]]; then
            echo "no zram: /sys/class/zram-control missing and no modprobe to load the module"
            return 1
        fi
    fi
    if [[ -e /sys/class/zram-control/hot_add ]]; then
        n=$(cat /sys/class/zram-control/hot_add 2>/dev/null) || { echo "zram hot_add failed"; return 1; }
        Z_HOTADDED=1
    else
        # module just loaded with one device: take zram0 only if unused
        [[ $(cat /sys/block/zram0/disksize 2>/dev/null) == 0 ]] || { echo "zram0 is in use and no hot_add"; return 1; }
        n=0
    fi
    ZN=$n ZDEV=/dev/zram$n
    for ((a = 0; a < 50; a++)); do
        [[ -b $ZDEV ]] && break
        sleep 0.1
    done
    [[ -b $ZDEV ]] || { echo "$ZDEV did not appear"; return 1; }
    algs=$(cat "/sys/block/zram$n/comp_algorithm")
    Z_COMP=''
    for a in lz4 zstd; do
        if [[ " ${algs//[\[\]]/ } " == *" $a "* ]]; then
            echo "$a" >"/sys/block/zram$n/comp_algorithm" 2>/dev/null && { Z_COMP=$a; break; }
        fi
    done
    [[ -n $Z_COMP ]] || Z_COMP=$(sed -n 's/.*\[\([^]]*\)\].*/\1/p' "/sys/block/zram$n/comp_algorithm")
    echo "$zram_size" >"/sys/block/zram$n/disksize" 2>/dev/null || { echo "cannot set disksize=$zram_size on $ZDEV"; return 1; }
    mkswap "$ZDEV" >/dev/null 2>&1 || { echo "mkswap $ZDEV failed"; return 1; }
    swapon -p 32767 "$ZDEV" 2>&1 || { echo "swapon $ZDEV failed"; return 1; }
    Z_SWAPON=1
    return 0
}

cg_peak() {
    local f=memory.max_usage_in_bytes
    [[ ${CG_KIND:-} == v2 ]] && f=memory.peak
    cat "$CG/$f" 2>/dev/null || echo '?'
}

swapfile_make() {
    SWAPFILE=$1
    rm -f "$SWAPFILE"
    if ! fallocate -l "$2" "$SWAPFILE" 2>/dev/null; then
        local mib
        mib=$(numfmt --from=iec "$2" 2>/dev/null) || { echo "bad swap file size '$2'"; SWAPFILE=''; return 1; }
        dd if=/dev/zero of="$SWAPFILE" bs=1M count=$((mib >> 20)) status=none ||
            { echo "cannot write $SWAPFILE"; rm -f "$SWAPFILE"; SWAPFILE=''; return 1; }
    fi
    chmod 600 "$SWAPFILE" && mkswap "$SWAPFILE" >/dev/null 2>&1 ||
        { echo "mkswap $SWAPFILE failed"; rm -f "$SWAPFILE"; SWAPFILE=''; return 1; }
}
swapfile_on() {
    swapon -p 32767 "$SWAPFILE" 2>&1 || { echo "swapon $SWAPFILE failed"; return 1; }
    SF_SWAPON=1
}
swapfile_off() {
    if ((SF_SWAPON)); then
        swapoff "$SWAPFILE" 2>/dev/null || echo "$SWAPLIB_NAME: WARNING: swapoff $SWAPFILE failed" >&2
        SF_SWAPON=0
    fi
}
swapfile_rm() {
    swapfile_off
    [[ -n $SWAPFILE ]] && rm -f "$SWAPFILE"
    SWAPFILE=''
}
bench_pool_up() {
    local i t
    SRV_OPTS=()
    [[ $2 == prealloc ]] && SRV_OPTS=(--capacity "${1}M" --prealloc)
    for i in 1 2; do
        "$G" memserver "${SRV_OPTS[@]}" --listen 127.0.0.1:0 --port-file "$TMP/port.$i" >"$TMP/server.$i.log" 2>&1 &
        SERVER_PIDS+=($!)
    done
    for ((t = 0; t < 600; t++)); do
        [[ -s $TMP/port.1 && -s $TMP/port.2 ]] && break
        sleep 0.1
    done
    [[ -s $TMP/port.1 && -s $TMP/port.2 ]] || { cat "$TMP"/server.*.log; return 1; }
    { echo "127.0.0.1:$(head -n1 "$TMP/port.1")"; echo "127.0.0.1:$(head -n1 "$TMP/port.2")"; } >"$TMP/pool.conf"
}
