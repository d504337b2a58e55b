#!/usr/bin/env bash
# fleet_run.sh - the fleet benchmark: two cbd daemons ("hosts" A and B on
# this machine) sharing circuits through a store on loopback, first a
# redis-server, then dynalite (DynamoDB) at two sync intervals.
#
#   bench/fleet_run.sh [--quick] [--scale] [--json FILE]
#
# Builds cbd, cbctl and fleet_bench in $CB_BUILD_DIR (default build), starts
# a redis-server without persistence and dynalite (tests/dynalite, `npm ci
# --prefix tests/dynalite`; without it or node the DynamoDB runs are
# skipped) on free loopback ports, and for each run starts host A and host B
# through bench/with_cbd.sh (each a throwaway instance on that run's store,
# big lanes so a million checks a second are not dropped) and runs
# fleet_bench as a worker of both: propagation A -> B (p50/p99), and store
# requests per second at 0, 100k and 1M checks per second (bench/fleet_bench.c
# says how). The runs:
#   redis     sync 1000 ms, 100 circuits, 300 rounds, 5 s windows;
#   dynamodb  sync 1000 ms, 250 circuits, 20 rounds, 10 s windows (a trip
#             takes up to a sync to arrive; a longer window for 6 requests/s);
#   dynamodb  sync 100 ms, 250 circuits, 100 rounds, 5 s windows;
# each in its own table (dynalite keeps tables in memory). The DynamoDB part
# takes about two minutes. Each run prints its Markdown tables; --json FILE
# gets {"hosts": 2, "runs": [...]} with one fleet_bench object per run.
# --quick: redis with a few rounds and 1 s windows, dynamodb at 100 ms only
# with 3 rounds, to see that everything runs.
# --scale: instead, the store's cost at scale with and without a read budget
# (docs/fleet.md, "Reads under a budget"), sync 1000 ms, workers on 100 hot
# circuits when there is a budget:
#   redis     100,000 circuits, no budget, then read_budget=5000;
#   dynamodb  10,000 circuits, no budget, then read_budget=1000 (dynalite
#             reads a few thousand items a second: 100,000 circuits without
#             a budget would only measure how far behind it falls).
#
# Exit status: 0 when every run that could start ran, else 1.
set -euo pipefail

quick=() json= scale=
while (($#)); do
    case $1 in
    --quick) quick=(--quick) ;;
    --scale) scale=1 ;;
    --json) json=$(realpath -m "$2"); shift ;;
    --json=*) json=$(realpath -m "${1#--json=}") ;;
    *) echo "usage: $0 [--quick] [--scale] [--json FILE]" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
build=${CB_BUILD_DIR:-build}
export CB_BUILD_DIR=$build
dynalite=tests/dynalite/node_modules/dynalite/cli.js
say() { printf 'fleet: %s\n' "$*" >&2; }

[[ -f $build/CMakeCache.txt ]] || ./scripts/setup.sh
if ! log=$(cmake --build "$build" -j"$(nproc)" --target cbd cbctl fleet_bench 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cbd-fleet.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# serve NAME START: runs the function START (which reads $port) in the
# background on a free loopback port, until it listens: a random port
# nothing answers on, and the next one when START dies (another process took
# the port first). Sets $port; 1 with START's log when it never listens.
listening() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
serve() {
    local name=$1 start=$2 try i pid
    for ((try = 0; try < 5; try++)); do
        port=$((20000 + RANDOM % 40000))
        listening "$port" && continue
        "$start" >"$tmp/$name.log" 2>&1 &
        pid=$!
        for ((i = 0; i < 200; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            listening "$port" && { pids+=("$pid"); say "$name on 127.0.0.1:$port (pid $pid)"; return 0; }
            sleep 0.05
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    say "$name did not start:"
    cat "$tmp/$name.log" >&2
    return 1
}
start_redis() { exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp"; }
start_dynalite() { exec node "$dynalite" --port "$port" --createTableMs 0; }

# fleet STORE-URI FLEET_BENCH-ARGS...: one run, hosts A and B on STORE-URI;
# its JSON goes to the next $tmp/run-N.json. with_cbd.sh gives its command
# CB_INSTANCE; host A's is passed on as CB_INSTANCE_A to the run inside
# host B's.
rc=0 runs=()
fleet() {
    local uri=$1 out=$tmp/run-${#runs[@]}.json
    shift
    # shellcheck disable=SC2016 # $CB_INSTANCE expands in the inner shell, on purpose
    if CBD_ARGS="--store $uri --lanes 16 --lane-capacity 65536 --capacity ${capacity:-16384}" \
        bench/with_cbd.sh fleet-a bash -c 'CB_INSTANCE_A=$CB_INSTANCE exec bench/with_cbd.sh fleet-b "$@"' _ \
        "$build/fleet_bench" --cbctl "$build/cbctl" --json "$out" "$@"; then
        runs+=("$out")
    else
        say "the run on $uri failed"
        rc=1
    fi
}

# ---- redis -------------------------------------------------------------------
if ! serve redis-server start_redis; then
    rc=1
elif [[ -n $scale ]]; then
    capacity=110000
    for budget in 0 5000; do
        fleet "redis://127.0.0.1:$port?prefix=cbd-fleet-bench-$$-$budget:&sync_ms=1000&read_budget=$budget" \
            --store redis --redis-port "$port" --sync-ms 1000 --iterations 5 --circuits 100000 --window-s 5 \
            --budget "$budget" --hot 100
    done
    capacity=
else
    fleet "redis://127.0.0.1:$port?prefix=cbd-fleet-bench-$$:&sync_ms=1000" \
        --store redis --redis-port "$port" --sync-ms 1000 "${quick[@]}"
fi

# ---- dynamodb (dynalite) -------------------------------------------------------
# dynalite checks that requests are signed, not by whom.
export AWS_ACCESS_KEY_ID=AKIDFLEETBENCH AWS_SECRET_ACCESS_KEY=fleet-bench-secret AWS_EC2_METADATA_DISABLED=true
unset AWS_SESSION_TOKEN AWS_PROFILE
if [[ -n $scale ]]; then
    ddb_runs=("1000 --iterations 5 --circuits 10000 --window-s 10 --budget 0 --hot 100"
        "1000 --iterations 5 --circuits 10000 --window-s 10 --budget 1000 --hot 100")
    capacity=16384
elif ((${#quick[@]})); then
    ddb_runs=("100 --quick --iterations 3")
else
    ddb_runs=("1000 --iterations 20 --circuits 250 --window-s 10" "100 --iterations 100 --circuits 250 --window-s 5")
fi
if [[ ! -f $dynalite ]] || ! command -v node >/dev/null; then
    say "dynalite or node missing (npm ci --prefix tests/dynalite): the DynamoDB runs are skipped"
elif serve dynalite start_dynalite; then
    for r in "${ddb_runs[@]}"; do
        read -r sync_ms args <<<"$r"
        budget=0
        [[ $args =~ --budget\ ([0-9]+) ]] && budget=${BASH_REMATCH[1]}
        uri="dynamodb://cbd-fleet-bench-$sync_ms-$budget?region=us-east-1&endpoint=http://127.0.0.1:$port"
        if "$build/cbctl" dynamodb create-table "$uri" >"$tmp/create-table.log" 2>&1; then
            # shellcheck disable=SC2086 # args is a list of options on purpose
            fleet "$uri&sync_ms=$sync_ms&read_budget=$budget" --store dynamodb --sync-ms "$sync_ms" $args
        else
            say "cannot create the table of $uri:"
            cat "$tmp/create-table.log" >&2
            rc=1
        fi
    done
else
    rc=1
fi

# ---- the runs' JSON as one object ----------------------------------------------
if [[ -n $json ]]; then
    {
        printf '{"hosts": 2, "runs": ['
        sep=
        for f in "${runs[@]}"; do
            printf '%s\n' "$sep"
            cat "$f"
            sep=,
        done
        printf ']}\n'
    } >"$json"
fi
exit "$rc"
