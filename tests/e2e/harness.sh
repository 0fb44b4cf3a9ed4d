# tests/e2e/harness.sh: the reporting and build-snapshot helpers every e2e
# script shares. Source it; it sets pass=0 fail=0.
#   ok/bad/note MSG   one "ok  MSG" / "FAIL MSG" / "# MSG" line (counted)
#   finish            print "N passed, M failed" and exit 0 iff nothing failed
#   snapshot_build    copy $BUILD/giantvm and the preload library into $TMP/bin,
#                     so a concurrent `make` cannot swap them mid-run
# shellcheck shell=bash disable=SC2034  # pass/fail are read by the caller
pass=0 fail=0
ok() { echo "ok  $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
note() { echo "# $*"; }
finish() {
    echo "$pass passed, $fail failed"
    ((fail == 0))
    exit $?
}
snapshot_build() {
    local try
    mkdir -p "$TMP/bin" || return 1
    for ((try = 0; try < 10; try++)); do
        if cp "$BUILD/giantvm" "$BUILD/libgiantvm-preload.so" "$TMP/bin/" 2>/dev/null &&
            "$TMP/bin/giantvm" --help >/dev/null 2>&1 &&
            [[ $(head -c4 "$TMP/bin/libgiantvm-preload.so" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
            return 0
        fi
        sleep 1
    done
    return 1
}
