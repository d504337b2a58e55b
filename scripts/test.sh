#!/usr/bin/env bash
# test.sh - the second quick-start command: build cbd and run every check.
#
#   1. scripts/setup.sh (packages if missing, dynalite, configure, build)
#      then scripts/check-includes.py: the include graph follows the
#      layers and has no module cycle
#   2. ctest in build (unit + integration tests; the tests start their own
#      cbd, redis-server and dynalite on unique names and loopback ports)
#   3. the demo against a throwaway cbd (its story must happen)
#   4. the benchmark's smoke run (bench/run.sh --quick: everything runs,
#      no timing is asserted)
#   5. AddressSanitizer + UBSan: build-asan, ctest there with
#      CB_TEST_SANITIZER=1 so slow tests can shrink (the Spin model, which
#      compiles its own verifiers, runs once, in step 2), and the demo
#   6. the libFuzzer harnesses (scripts/fuzz.sh: clang, ASan+UBSan), each
#      for CB_FUZZ_SECONDS (default 30); their committed corpora are also
#      replayed by ctest in steps 2 and 5 (label fuzz)
#   7. ThreadSanitizer, when the run so far left time for it: cbd, libcb,
#      the demo, the bench and tests/stress/tsan_stress built in build-tsan;
#      tsan_stress runs the segment's protocols under threads for
#      CB_TSAN_STRESS_SECONDS, then the demo and the bench smoke run against
#      a TSan cbd (halt_on_error: a race fails the step). Not the criterion
#      tests: criterion cannot start under TSan (its inheritable arena
#      cannot be mapped; Criterion issue #274).
#
# Every step runs even if an earlier one failed (except when the build
# itself fails); the last line is "summary: N passed, M failed" and the
# exit status is non-zero on any failure. Logs go to a temporary directory
# named in the summary.
#
# Environment:
#   CB_BUILD_DIR=DIR         build directory (default build; the sanitizer
#                            builds go to DIR-asan and DIR-tsan)
#   CB_SKIP_SANITIZERS=1     skip steps 5, 6 and 7
#   CB_FUZZ_SECONDS=N        seconds per fuzzer in step 6 (default 30; 0 skips it)
#   CB_TSAN_IF_UNDER_S=N     run step 7 only if steps 1-6 took less (default 900)
#   CB_TSAN_STRESS_SECONDS=N how long tsan_stress runs in step 7 (default 60)
set -uo pipefail
cd "$(dirname "$0")/.."

base=${CB_BUILD_DIR:-build}
logdir=$(mktemp -d "${TMPDIR:-/tmp}/cbd-test.XXXXXX")
passed=0 failed=0
report=()

note() { report+=("$(printf '  %-22s %s' "$1" "$2")"); }
banner() { printf '\n==> %s\n' "$*"; }

# A step that is one check: a name, then the command.
check() {
    local name=$1 t=$SECONDS
    shift
    banner "$name"
    if "$@"; then
        passed=$((passed + 1))
        note "$name" "ok ($((SECONDS - t)) s)"
        return 0
    fi
    failed=$((failed + 1))
    note "$name" "FAILED ($((SECONDS - t)) s)"
    return 1
}

# ctest in a build directory; its own counts go into the totals.
run_ctest() {
    local name=$1 dir=$2 t=$SECONDS log=$logdir/$1.log
    shift 2
    banner "$name"
    ctest --test-dir "$dir" --output-on-failure -j2 --no-tests=error "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]} line
    line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
    if [[ $line =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
        local f=${BASH_REMATCH[1]} total=${BASH_REMATCH[2]}
        passed=$((passed + total - f))
        failed=$((failed + f + (rc != 0 && f == 0)))
        note "$name" "$((total - f))/$total tests passed ($((SECONDS - t)) s)$( ((rc == 0)) || echo ', FAILED')"
    else
        failed=$((failed + 1))
        note "$name" "FAILED: ctest ran no test or did not finish (log: $log)"
    fi
    return "$rc"
}

build() { # CB_SANITIZE value ("" for the plain build), then targets (default: all)
    CB_SANITIZE=$1 CB_BUILD_DIR=$base${1:+-$1} CB_TARGETS="${*:2}" ./scripts/setup.sh >"$logdir/setup${1:+-$1}.log" 2>&1 || {
        tail -n 40 "$logdir/setup${1:+-$1}.log"
        return 1
    }
    tail -n 3 "$logdir/setup${1:+-$1}.log"
}

finish() {
    banner "summary ($((SECONDS / 60))m$((SECONDS % 60))s, logs in $logdir)"
    printf '%s\n' "${report[@]}"
    echo "summary: $passed passed, $failed failed"
    ((failed == 0))
    exit
}

if ! check "build" build ""; then
    finish
fi
check "include graph" python3 scripts/check-includes.py
run_ctest "ctest" "$base"
check "demo" env CB_BUILD_DIR="$base" bench/with_cbd.sh demo "$base/cb_demo"
check "bench smoke" env CB_BUILD_DIR="$base" bench/run.sh --quick

if [[ ${CB_SKIP_SANITIZERS:-0} == 1 ]]; then
    note "sanitizers" "skipped (CB_SKIP_SANITIZERS=1)"
    finish
fi
if check "asan build" build asan; then
    CB_TEST_SANITIZER=1 ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} run_ctest "asan ctest" "$base-asan" -LE model
    check "asan demo" env CB_BUILD_DIR="$base-asan" bench/with_cbd.sh demo "$base-asan/cb_demo"
fi
if [[ ${CB_FUZZ_SECONDS:-30} == 0 ]]; then
    note "fuzz" "skipped (CB_FUZZ_SECONDS=0)"
elif command -v clang >/dev/null; then
    check "fuzz" env CB_FUZZ_SECONDS="${CB_FUZZ_SECONDS:-30}" scripts/fuzz.sh
else
    note "fuzz" "skipped (no clang; the corpora were replayed by ctest)"
fi
if ((SECONDS >= ${CB_TSAN_IF_UNDER_S:-900})); then
    note "tsan" "skipped (${SECONDS} s used; CB_TSAN_IF_UNDER_S=${CB_TSAN_IF_UNDER_S:-900})"
elif check "tsan build" build tsan cbd cb_demo cb_bench tsan_stress; then
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1}
    check "tsan stress" "$base-tsan/tests/stress/tsan_stress" --seconds "${CB_TSAN_STRESS_SECONDS:-60}"
    check "tsan demo" env CB_BUILD_DIR="$base-tsan" bench/with_cbd.sh demo "$base-tsan/cb_demo"
    check "tsan bench smoke" env CB_BUILD_DIR="$base-tsan" bench/run.sh --quick
fi
finish
