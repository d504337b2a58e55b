#!/usr/bin/env bash
# fuzz.sh - build cbd's libFuzzer harnesses with clang and run each one.
#
#   scripts/fuzz.sh [SECONDS]        configure build-fuzz (clang, -DCB_FUZZ=ON:
#                                    ASan + UBSan + coverage), build every
#                                    tests/fuzz/fuzz_*.c and run each for
#                                    SECONDS (default $CB_FUZZ_SECONDS or 30)
#   scripts/fuzz.sh --run BUILDDIR   only run the fuzzers built in BUILDDIR
#                                    (the CMake target `fuzz` calls this)
#
# Each fuzzer starts from its committed corpus (tests/fuzz/corpus/<surface>)
# plus what earlier runs found (BUILDDIR/fuzz-corpus/<surface>, not
# committed) and uses tests/fuzz/<surface>.dict when present. Allocations
# above 256 MiB count as crashes (-malloc_limit_mb), so a length field that
# makes cbd allocate what the input does not carry is found. A crash is
# copied to tests/fuzz/corpus/<surface>/crash-<sha1>: commit it with the fix,
# and the replay test (ctest -L fuzz) keeps it forever. Prints one line per
# fuzzer with its executions and exits non-zero if any found a crash.
# Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${CB_FUZZ_SECONDS:-30}
build=build-fuzz
if [[ ${1:-} == --run ]]; then
    build=${2:?usage: fuzz.sh --run BUILDDIR}
else
    seconds=${1:-$seconds}
    command -v clang >/dev/null || { echo "fuzz: clang not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
    CC=clang cmake -S . -B "$build" -DCB_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 1
    targets=$(sed -n 's/^cb_add_fuzzer(\([a-z_0-9]*\).*/fuzz_\1/p' tests/fuzz/CMakeLists.txt)
    # shellcheck disable=SC2086
    cmake --build "$build" -j"$(nproc)" --target $targets >"$build/fuzz-build.log" 2>&1 ||
        { tail -n 30 "$build/fuzz-build.log"; exit 1; }
fi

failed=0
for bin in "$build"/tests/fuzz/fuzz_*; do
    [[ -x $bin && $bin != *_replay ]] || continue
    surface=${bin##*/fuzz_}
    seeds=tests/fuzz/corpus/$surface
    work=$build/fuzz-corpus/$surface
    artifacts=$build/fuzz-artifacts/$surface/
    mkdir -p "$work" "$artifacts" "$seeds"
    dict=()
    [[ -f tests/fuzz/$surface.dict ]] && dict=(-dict="tests/fuzz/$surface.dict")
    log=$build/fuzz-$surface.log
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
        "$bin" -max_total_time="$seconds" -malloc_limit_mb=256 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$artifacts" "${dict[@]}" "$work" "$seeds" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if ((rc != 0)); then
        failed=1
        for a in "$artifacts"*; do
            [[ -f $a ]] || continue
            cp "$a" "$seeds/crash-$(sha1sum "$a" | cut -c1-16)"
        done
        echo "fuzz $surface: FAILED after ${execs:-?} executions (log $log); the input is in $seeds/"
        grep -m 5 -E 'ERROR|SUMMARY|runtime error' "$log"
    else
        echo "fuzz $surface: ${execs:-?} executions in ${seconds} s, no crash"
    fi
done
exit "$failed"
