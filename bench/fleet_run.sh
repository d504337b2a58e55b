#!/usr/bin/env bash
# fleet_run.sh - the fleet benchmark: two cbd daemons ("hosts" A and B on
# this machine) sharing circuits through one redis-server on loopback.
#
#   bench/fleet_run.sh [--quick] [--json FILE]
#
# Builds cbd and fleet_bench in $CB_BUILD_DIR (default build), starts a
# redis-server without persistence on a free loopback port, then host A and
# host B through bench/with_cbd.sh (each a throwaway instance, its store
# redis://127.0.0.1:PORT with a prefix of its own run and sync_ms 1000, big
# lanes so a million checks a second are not dropped), and runs fleet_bench
# as a worker of both: propagation A -> B (p50/p99), and redis commands per
# second at 0, 100k and 1M checks per second (bench/fleet_bench.c says how).
# --quick: a few rounds and short windows, to see that everything runs.
#
# Exit status: fleet_bench's, or 1 when redis or a daemon does not come up.
set -euo pipefail

quick=() json=()
while (($#)); do
    case $1 in
    --quick) quick=(--quick) ;;
    --json) json=(--json "$(realpath -m "$2")"); shift ;;
    --json=*) json=(--json "$(realpath -m "${1#--json=}")") ;;
    *) echo "usage: $0 [--quick] [--json FILE]" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
build=${CB_BUILD_DIR:-build}
export CB_BUILD_DIR=$build
sync_ms=1000
say() { printf 'fleet: %s\n' "$*" >&2; }

[[ -f $build/CMakeCache.txt ]] || ./scripts/setup.sh
if ! log=$(cmake --build "$build" -j"$(nproc)" --target cbd fleet_bench 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cbd-fleet.XXXXXX")
redis_pid=
cleanup() {
    if [[ -n $redis_pid ]]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: a random one nothing answers on; redis tells us if
# another process took it first (then try the next).
listening() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for ((try = 0; try < 5; try++)); do
    port=$((20000 + RANDOM % 40000))
    listening "$port" && continue
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
    redis_pid=$!
    for ((i = 0; i < 100; i++)); do
        listening "$port" && break
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.05
    done
    listening "$port" && break
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
done
[[ -n $redis_pid ]] || { say "redis-server did not start (see $tmp/redis.log)"; cat "$tmp/redis.log" >&2; exit 1; }
say "redis-server on 127.0.0.1:$port (pid $redis_pid)"

export CBD_ARGS="--store redis://127.0.0.1:$port?prefix=cbd-fleet-bench-$$:&sync_ms=$sync_ms --lanes 16 --lane-capacity 65536"
# with_cbd.sh gives its command CB_INSTANCE; host A's is passed on as
# CB_INSTANCE_A to the run inside host B's.
# shellcheck disable=SC2016 # $CB_INSTANCE expands in the inner shell, on purpose
bench/with_cbd.sh fleet-a bash -c 'CB_INSTANCE_A=$CB_INSTANCE exec bench/with_cbd.sh fleet-b "$@"' _ \
    "$build/fleet_bench" --redis-port "$port" --sync-ms "$sync_ms" "${quick[@]}" "${json[@]}"
