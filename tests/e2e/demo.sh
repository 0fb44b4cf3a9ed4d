#!/usr/bin/env bash
# make demo: boot a small Linux guest whose RAM lives in an embedded local
# pool (a memory server on 127.0.0.1 started and stopped by `giantvm run`),
# run a memory workload in it, print its result and the engine's statistics.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
MEM=${GIANTVM_DEMO_MEM:-512}
MIB=${GIANTVM_DEMO_MIB:-256}
LOCAL=${GIANTVM_DEMO_LOCAL_MEM:-128M}
if [ "$(id -u)" != 0 ]; then
	echo "make demo: run as root the first time (it installs qemu-system-x86, busybox-static and cpio)" >&2
fi
# shellcheck source=tests/e2e/guest.sh
. tests/e2e/guest.sh
gvm_guest_prepare
mapfile -t args < <(gvm_guest_qemu_args "$MEM" "$MIB" gvm.seed=1)
expect=$("$GVM_WORKLOAD" --expect "$MIB" 1)
stats=$(mktemp)
log=$(mktemp)
trap 'rm -f "$stats" "$log"' EXIT
echo "== booting a ${MEM} MiB guest with its RAM in an embedded pool and ${LOCAL} of it kept locally;"
echo "   it writes and verifies ${MIB} MiB, so pages travel to the pool and back"
set +e
# No pool configured: `giantvm run` starts the embedded memory server itself.
out=$(cd /tmp && env -u GIANTVM_POOL GIANTVM_STATS_OUT="$stats" timeout 600 \
	"$OLDPWD/$BUILD/giantvm" run --vm-id demo --local-mem "$LOCAL" --log "$log" -- qemu-system-x86_64 "${args[@]}" </dev/null 2>&1)
rc=$?
set -e
# giantvm's own lines are in its log (QEMU's stderr stays QEMU's)
{ printf '%s\n' "$out"; cat "$log"; } | grep -E '^\[GiantVM\]|GIANTVM-|giantvm' || true
echo
result=$(printf '%s\n' "$out" | grep -a 'GIANTVM-RESULT' | tr -d '\r' || true)
if [ $rc -ne 0 ] || [ -z "$result" ]; then
	echo "make demo: FAILED (giantvm run exit $rc)"; exit 1
fi
echo "guest result:   $result"
echo "host expected:  checksum=$expect"
case "$result" in
*"checksum=$expect verify=ok"*) echo "make demo: OK: the guest's memory checks out; its RAM lived in the pool beyond the ${LOCAL} kept locally" ;;
*) echo "make demo: FAILED: checksum mismatch"; exit 1 ;;
esac
if [ -s "$stats" ]; then
	echo; echo "engine statistics (giantvm stat --json of the VM at exit):"; cat "$stats"; echo
fi
