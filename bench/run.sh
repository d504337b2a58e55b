#!/usr/bin/env bash
# run.sh - run cb_bench against a throwaway cbd.
#
#   bench/run.sh [--quick] [--json FILE] [--workers M] [--trip-runs N]
#
# Builds cbd and cb_bench in $CB_BUILD_DIR (default build; configured by
# scripts/setup.sh when missing), then runs build/cb_bench with the given
# arguments through bench/with_cbd.sh (own instance, socket and state file
# in a temporary directory). Exit status: cb_bench's (0 = everything ran;
# timings are reported, never asserted).
set -euo pipefail

# The script works from the repository root: keep a relative --json FILE
# relative to where it was called from.
args=() prev=
for a in "$@"; do
    [[ $prev == --json && $a != /* ]] && a=$PWD/$a
    [[ $a == --json=* && $a != --json=/* ]] && a=--json=$PWD/${a#--json=}
    args+=("$a")
    prev=$a
done
cd "$(dirname "$0")/.."
build=${CB_BUILD_DIR:-build}
export CB_BUILD_DIR=$build

if [[ ! -f $build/CMakeCache.txt ]]; then
    ./scripts/setup.sh
fi
if ! out=$(cmake --build "$build" -j"$(nproc)" --target cbd cb_bench 2>&1); then
    printf '%s\n' "$out" >&2
    exit 1
fi

exec bench/with_cbd.sh bench "$build/cb_bench" "${args[@]}"
