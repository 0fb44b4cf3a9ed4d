#!/usr/bin/env bash
# bench/guest_walltime.sh — wall time of one guest boot + memory workload,
# on local RAM vs. under a command prefix (giantvm), in one run.
#
#   bench/guest_walltime.sh [--json] [--mem MIB] [--mib MIB] [--seed S]
#                           [--passes P] [--timeout SEC]
#
# Boots the e2e guest (tests/e2e/guest.sh) twice, sequentially:
#   local : timeout SEC qemu-system-x86_64 <args>
#   pooled: timeout SEC $GVM_RUN_PREFIX qemu-system-x86_64 <args>
# GVM_RUN_PREFIX is split on whitespace, e.g. GVM_RUN_PREFIX="build/giantvm run --";
# relative paths are taken from the repo root (the script cd's there).  If it
# is empty, the second run is local too (a noise baseline: ratio ~ 1).
# Defaults: --mem 512 --mib 256 --seed 1 --passes 1 --timeout 600.
#
# Wall time = the whole QEMU process (boot + workload + poweroff), measured
# on the host; the guest's own workload time (elapsed_ms) is reported too.
# Both runs must print verify=ok with the checksum the host computes; if
# either fails, no ratio is reported and the exit status is 1.
# Output: human-readable lines; with --json only one JSON object on stdout
#   {"local_s":..,"pooled_s":..,"ratio":..,"local_workload_ms":..,
#    "pooled_workload_ms":..,"mem_mib":..,"mib":..,"prefix":".."}
# (ratio = pooled_s / local_s) and the human lines on stderr.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# shellcheck source=../tests/e2e/guest.sh
. "$ROOT/tests/e2e/guest.sh"

json=0 mem=512 mib=256 seed=1 passes=1 to=600
while (($#)); do
    case $1 in
    --json) json=1 ;;
    --mem) mem=${2:?}; shift ;;
    --mib) mib=${2:?}; shift ;;
    --seed) seed=${2:?}; shift ;;
    --passes) passes=${2:?}; shift ;;
    --timeout) to=${2:?}; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "guest_walltime.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { if ((json)); then echo "$*" >&2; else echo "$*"; fi; }

gvm_guest_prepare || { echo "guest_walltime.sh: gvm_guest_prepare failed" >&2; exit 1; }
expect=$("$GVM_WORKLOAD" --expect "$mib" "$seed") || exit 1
read -r -a prefix <<<"${GVM_RUN_PREFIX:-}"
log=$(mktemp /tmp/gvm-bench.XXXXXX.log)
trap 'rm -f "$log"' EXIT

# run LABEL PREFIX... : sets R_S and R_MS
run() {
    local label=$1
    shift
    # shellcheck disable=SC2034  # read by gvm_guest_boot
    GVM_BOOT_PREFIX=("$@")
    gvm_guest_boot "$log" "$to" "$mem" "$mib" "gvm.seed=$seed" "gvm.passes=$passes"
    local rc=$?
    R_S=$GVM_BOOT_S
    R_MS=$(sed -n 's/.* elapsed_ms=\([0-9]*\).*/\1/p' <<<"$GVM_RESULT")
    if ((rc != 0)) || [[ $GVM_RESULT != *" checksum=$expect verify=ok "* ]]; then
        echo "guest_walltime.sh: $label run failed (rc=$rc, ${R_S}s): ${GVM_RESULT:-no GIANTVM-RESULT line}" >&2
        tr -d '\r' <"$log" | tail -n 20 | sed 's/^/  | /' >&2
        return 1
    fi
    say "$label: ${R_S}s wall (guest workload ${R_MS} ms) ${GVM_RESULT}"
}

say "guest: -m $mem, workload $mib MiB seed $seed passes $passes, kernel $GVM_KERNEL_PKG"
say "prefix: ${prefix[*]:-(none: second run is local too)}"
run local || exit 1
local_s=$R_S local_ms=$R_MS
run pooled "${prefix[@]}" || exit 1
pooled_s=$R_S pooled_ms=$R_MS
ratio=$(awk -v a="$pooled_s" -v b="$local_s" 'BEGIN { printf "%.3f", a / b }')
say "ratio pooled/local: $ratio"
if ((json)); then
    p=${prefix[*]:-}
    p=${p//\\/\\\\}
    p=${p//\"/\\\"}
    printf '{"local_s":%s,"pooled_s":%s,"ratio":%s,"local_workload_ms":%s,"pooled_workload_ms":%s,"mem_mib":%s,"mib":%s,"prefix":"%s"}\n' \
        "$local_s" "$pooled_s" "$ratio" "$local_ms" "$pooled_ms" "$mem" "$mib" "$p"
fi
