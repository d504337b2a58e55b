#!/usr/bin/env bash
# demo.sh - the first quick-start command: watch six worker processes share
# one circuit breaker.
#
# Installs and builds cbd and the demo (scripts/setup.sh; its output goes
# to a log unless it fails), starts a throwaway cbd with its socket and local state file in a
# temporary directory (bench/with_cbd.sh), runs build/cb_demo against it,
# stops the daemon and cleans up. Exits with the demo's status: 0 when the
# story happened (one trip, one probe at a time, closed again).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CB_BUILD_DIR:-build}
export CB_BUILD_DIR=$build

setup_log=$(mktemp "${TMPDIR:-/tmp}/cbd-setup.XXXXXX.log")
echo "==> installing dependencies and building (log: $setup_log)"
if ! CB_TARGETS="cbd cb_demo" ./scripts/setup.sh >"$setup_log" 2>&1; then
    tail -n 40 "$setup_log" >&2
    echo "==> setup failed; the whole log is in $setup_log" >&2
    exit 1
fi
rm -f "$setup_log"

echo "==> running the demo against a throwaway cbd"
echo
rc=0
CBD_SHOW_LOG=' transition ' bench/with_cbd.sh demo "$build/cb_demo" || rc=$?
echo
if ((rc == 0)); then
    echo "==> demo OK: one trip host-wide, one probe at a time, closed again"
else
    echo "==> demo FAILED (status $rc)"
fi
exit "$rc"
