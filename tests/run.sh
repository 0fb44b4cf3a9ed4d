#!/usr/bin/env bash
# Runs the test programs: tests/run.sh [unit|integration|e2e|all] (default all).
# Each program runs under a timeout; its own output is shown. A program exits
# 0 (passed), 77 (it or some of its cases could not run here: SKIPPED) or
# anything else (FAILED). With CI=true a skip counts as a failure: CI must run
# everything. The last line is "N passed, M failed, K skipped" (programs);
# the exit status is 0 iff nothing failed (and, under CI=true, nothing skipped).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
# Some scripts take the build directory as GVM_BUILD_DIR (absolute), others as BUILD.
case $BUILD in /*) BUILD_ABS=$BUILD ;; *) BUILD_ABS=$PWD/$BUILD ;; esac
what=${1:-all}
case $what in
unit | integration | e2e | all) ;;
*) echo "usage: tests/run.sh [unit|integration|e2e|all]"; exit 2 ;;
esac
pass=0; fail=0; skip=0; failed=(); skipped=()

run_one() { # name timeout cmd...
	local name=$1 tmo=$2; shift 2
	local t0=$SECONDS rc=0
	echo "=== $name"
	timeout --kill-after=10 "$tmo" "$@" || rc=$?
	if [ "$rc" -eq 0 ]; then
		pass=$((pass + 1)); echo "=== $name: ok ($((SECONDS - t0)) s)"
	elif [ "$rc" -eq 77 ] && [ "${CI:-}" = true ]; then
		fail=$((fail + 1)); failed+=("$name")
		echo "=== $name: FAILED (SKIPPED, and CI=true counts a skip as a failure; $((SECONDS - t0)) s)"
	elif [ "$rc" -eq 77 ]; then
		skip=$((skip + 1)); skipped+=("$name"); echo "=== $name: SKIPPED ($((SECONDS - t0)) s)"
	else
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
		run_one "integration/$(basename "$s" .sh)" 900 env BUILD="$BUILD" GVM_BUILD_DIR="$BUILD_ABS" bash "$s"
	done
fi
if [ "$what" = all ] || [ "$what" = e2e ]; then
	for s in tests/e2e/test_*.sh; do
		run_one "e2e/$(basename "$s" .sh)" 1200 env BUILD="$BUILD" GVM_BUILD_DIR="$BUILD_ABS" bash "$s"
	done
fi

echo
[ ${#skipped[@]} -gt 0 ] && echo "skipped: ${skipped[*]}"
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
