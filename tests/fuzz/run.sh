#!/usr/bin/env bash
# Builds and runs the libFuzzer harnesses: tests/fuzz/run.sh [SECONDS_PER_HARNESS] (default 60).
#
# Needs clang with libFuzzer (Debian: clang + libclang-rt-<ver>-dev) and libssl-dev.
# Everything is built in build-fuzz/ (override with BUILD_FUZZ=dir); each harness runs
# on a temporary copy of its seed corpus (tests/fuzz/corpus/<harness>/ plus the seeds
# tests/fuzz/gen_corpus.c writes), so the repository is never modified. A harness
# fails on any crash, sanitizer report, leak, timeout or out-of-memory; its log stays
# in build-fuzz/logs/ and the reproducer in build-fuzz/artifacts/<harness>/.
# Prints one line per harness with its executions, ends with "N passed, M failed",
# exits non-zero if anything failed. There is no skip: a missing compiler fails.
set -u
cd "$(dirname "$0")/../.."

SECS=${1:-60}
CC=${CLANG:-clang}
B=${BUILD_FUZZ:-build-fuzz}
HARNESSES=(fuzz_proto_server fuzz_proto_client fuzz_config fuzz_qemu_text)
LIB_SRC=(src/lib/proto.c src/lib/util.c src/lib/log.c src/lib/auth.c src/lib/config.c
	 src/cli/qemu.c src/memserver/store.c)
CFLAGS=(-g -O1 -std=gnu11 -D_GNU_SOURCE -fno-omit-frame-pointer -Iinclude -Isrc/lib -Isrc/memserver -Isrc/cli
	-fno-sanitize-recover=undefined)
SAN=address,undefined
LDLIBS=(-lcrypto -pthread)

case $SECS in
''|*[!0-9]*|0) echo "usage: tests/fuzz/run.sh [SECONDS_PER_HARNESS]  (a positive integer)"; exit 2 ;;
esac

pass=0; fail=0; failed=()
summary() {
	echo
	[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
	echo "$pass passed, $fail failed"
}
fail_all() { # message
	echo "tests/fuzz/run.sh: $1"
	fail=${#HARNESSES[@]}; failed=("${HARNESSES[@]}")
	summary
	exit 1
}

command -v "$CC" >/dev/null 2>&1 || fail_all "'$CC' not found: install clang and libclang-rt-dev (libFuzzer)"

mkdir -p "$B/obj" "$B/logs" || fail_all "cannot create $B"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/giantvm-fuzz.XXXXXX") || fail_all "mktemp failed"
trap 'rm -rf "$WORK"' EXIT

# --- build: library objects (instrumented for coverage), one archive, each harness
echo "=== build ($("$CC" --version | head -n1))"
objs=()
for src in "${LIB_SRC[@]}"; do
	obj="$B/obj/$(echo "${src%.c}" | tr / _).o"
	if ! "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,$SAN -c -o "$obj" "$src"; then
		fail_all "cannot compile $src"
	fi
	objs+=("$obj")
done
rm -f "$B/libgiantvm-fuzz.a"
ar rcs "$B/libgiantvm-fuzz.a" "${objs[@]}" || fail_all "ar failed"

# The seed generator uses the library's encoder (checked by ASan/UBSan too).
if ! "$CC" "${CFLAGS[@]}" -fsanitize=$SAN -o "$B/gen_corpus" tests/fuzz/gen_corpus.c src/lib/proto.c ||
   ! "$B/gen_corpus" "$WORK/seeds"; then
	fail_all "cannot build or run tests/fuzz/gen_corpus"
fi

built=()
for h in "${HARNESSES[@]}"; do
	if "$CC" "${CFLAGS[@]}" -Wall -Wextra -fsanitize=fuzzer,$SAN -o "$B/$h" "tests/fuzz/$h.c" \
		"$B/libgiantvm-fuzz.a" "${LDLIBS[@]}"; then
		built+=("$h")
	else
		echo "=== $h: build FAILED"
	fi
done

# --- run
max_len() {
	case $1 in
	fuzz_proto_server) echo 131072 ;; # WRITE frames carry 4 KiB pages
	fuzz_proto_client) echo 65536 ;;
	*) echo 8192 ;;
	esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
BAD='ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer|deadly signal|ALARM: working on the last Unit|out-of-memory|fuzz invariant violated'

echo "=== run: $SECS s per harness"
for h in "${HARNESSES[@]}"; do
	log="$B/logs/$h.log"
	art="$B/artifacts/$h/"
	if [[ " ${built[*]} " != *" $h "* ]]; then
		fail=$((fail + 1)); failed+=("$h"); echo "$h: not built FAIL"
		continue
	fi
	corpus="$WORK/corpus/$h"
	rm -rf "$art"
	mkdir -p "$corpus" "$art"
	[ -d "tests/fuzz/corpus/$h" ] && cp -R "tests/fuzz/corpus/$h/." "$corpus/"
	[ -d "$WORK/seeds/$h" ] && cp -R "$WORK/seeds/$h/." "$corpus/"
	n_seeds=$(find "$corpus" -type f | wc -l)
	timeout --kill-after=30 $((SECS + 300)) "$B/$h" -max_total_time="$SECS" -rss_limit_mb=2048 \
		-timeout=10 -print_final_stats=1 -max_len="$(max_len "$h")" -artifact_prefix="$art" \
		"$corpus" >"$log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
	if [ "$rc" -eq 0 ] && [ -n "$execs" ] && [ "$execs" -gt 0 ] && ! grep -Eq "$BAD" "$log"; then
		pass=$((pass + 1))
		echo "$h: ${execs} execs (${n_seeds} seeds) ok"
	else
		fail=$((fail + 1)); failed+=("$h")
		echo "$h: ${execs:-?} execs (exit $rc) FAIL; log $log"
		grep -E "$BAD|^(==[0-9]+==|    #[0-9])" "$log" | head -n 40 | sed 's/^/    /'
		for f in "$art"*; do [ -f "$f" ] && echo "    reproducer: $f (run: $B/$h $f)"; done
	fi
done

summary
[ "$fail" -eq 0 ]
