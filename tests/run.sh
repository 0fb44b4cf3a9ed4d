#!/usr/bin/env bash
# Runs the test programs: tests/run.sh [unit|integration|e2e|all] (default all).
# Each program runs under a timeout; its own output is shown. There is no skip:
# a test that cannot run fails. The last line is "N passed, M failed" (programs).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
what=${1:-all}
pass=0; fail=0; failed=()

run_one() { # name timeout cmd...
	local name=$1 tmo=$2; shift 2
	local t0=$SECONDS
	echo "=== $name"
	if timeout --kill-after=10 "$tmo" "$@"; then
		pass=$((pass + 1)); echo "=== $name: ok ($((SECONDS - t0)) s)"
	else
		local rc=$?
		fail=$((fail + 1)); failed+=("$name"); echo "=== $name: FAILED (exit $rc, $((SECONDS - t0)) s)"
	fi
}

if [ "$(id -u)" != 0 ] && [ "${CI:-}" = true ]; then
	echo "tests/run.sh: CI runs the tests as root (network namespaces, userfaultfd)"; exit 1
fi

if [ "$what" = all ] || [ "$what" = unit ]; then
	for src in tests/unit/*.c; do
		n=$(basename "$src" .c); run_one "unit/$n" 300 "$BUILD/tests/$n"
	done
fi
if [ "$what" = all ] || [ "$what" = integration ]; then
	for src in tests/integration/*.c; do
		n=$(basename "$src" .c); run_one "integration/$n" 600 "$BUILD/tests/$n"
	done
	for s in tests/integration/*.sh; do
		[ -e "$s" ] || continue
		run_one "integration/$(basename "$s" .sh)" 900 env BUILD="$BUILD" bash "$s"
	done
fi
if [ "$what" = all ] || [ "$what" = e2e ]; then
	for s in tests/e2e/test_*.sh; do
		run_one "e2e/$(basename "$s" .sh)" 1200 env BUILD="$BUILD" bash "$s"
	done
fi

echo
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
