#!/usr/bin/env bash
# run.sh - the benchmark harness: one command, every measurement, one report.
#
#   bench/run.sh            full run (~5 min) into bench/results/<date>/
#   bench/run.sh --quick    smoke run: tiny counts, no timing means anything,
#                           nothing kept (unless --out); exit 0 = everything ran
#   bench/run.sh [--quick] --out DIR
#
# Every cbd runs with the scheduling systemd/cbd.service gives it
# (CBD_SCHED=unit, see bench/with_cbd.sh: SCHED_RR priority 1 today), so the
# figures are a deployment's; CBD_SCHED=default (or inline directives)
# overrides it. Without the privilege to raise cbd's priority (not root, no
# CAP_SYS_NICE) cbd runs with the default scheduling and a warning says so;
# the results say what cbd ran with (trip_daemon_sched).
#
# Builds cbd, cb_bench and cb_bench_remote in $CB_BUILD_DIR (default build;
# configured by scripts/setup.sh when missing), starts a redis-server and
# dynalite on free loopback ports, and runs, each against a throwaway cbd
# (bench/with_cbd.sh):
#   1. cb_bench: micro, in-process baseline, scaling, semantics, trip latency;
#      then the trip latency once more under default scheduling, the
#      comparison (trip_default.json);
#   2. cb_bench --throughput under a cbd with big lanes and a 1 ms drain;
#   3. cb_bench --instr under valgrind --tool=callgrind: instructions per call
#      (full run only: valgrind cannot run sanitizer builds);
#   4. cb_bench_remote: the Redis-per-call and DynamoDB-per-call baselines;
#   5. the fleet propagation bench, bench/fleet_run.sh, when it exists;
#   6. scale_bench: one host with 100,000 circuits and 1,024 worker threads
#      (memory, registration rate, idle CPU, drain, cbctl, history storm),
#      kept as DIR/scale.md and DIR/scale.json (quick: 2,000 and 64);
# then bench/report.py writes DIR/results.md, DIR/results.json and the PNG
# plots (gnuplot). Timings are reported, never asserted: the exit status
# says whether every part ran.
set -euo pipefail

quick=() out=
while (($#)); do
    case $1 in
    --quick) quick=(--quick) ;;
    --out) out=$(realpath -m "$2"); shift ;;
    --out=*) out=$(realpath -m "${1#--out=}") ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: $0 [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
build=${CB_BUILD_DIR:-build}
export CB_BUILD_DIR=$build
export CBD_SCHED=${CBD_SCHED:-unit}
say() { printf 'bench: %s\n' "$*" >&2; }

keep=1
if [[ -z $out ]]; then
    if ((${#quick[@]})); then out=$(mktemp -d "${TMPDIR:-/tmp}/cb-bench.XXXXXX") keep=0
    else out=$PWD/bench/results/$(date +%F); fi
fi
mkdir -p "$out"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    ((keep)) || rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build ----------------------------------------------------------------
[[ -f $build/CMakeCache.txt ]] || ./scripts/setup.sh
if ! log=$(cmake --build "$build" -j"$(nproc)" --target cbd cbctl cb_bench cb_bench_remote scale_bench 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi

# ---- stores on free loopback ports ------------------------------------------
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port pid: until something listens, or the pid died (10 s)
    for ((i = 0; i < 200; i++)); do
        (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
remote_args=()
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$out/redis.log" 2>&1 &
pids+=($!)
if wait_port "$rport" $!; then remote_args+=(--redis-port "$rport"); else say "redis-server did not start: Redis baseline skipped"; fi
dynalite=tests/dynalite/node_modules/dynalite/cli.js
if [[ -f $dynalite ]]; then
    dport=$(free_port)
    node "$dynalite" --port "$dport" --createTableMs 0 >"$out/dynalite.log" 2>&1 &
    pids+=($!)
    if wait_port "$dport" $!; then remote_args+=(--dynamo-port "$dport"); else say "dynalite did not start: DynamoDB baseline skipped"; fi
else
    say "$dynalite missing (npm ci --prefix tests/dynalite): DynamoDB baseline skipped"
fi

# ---- the runs ---------------------------------------------------------------
rc=0
part() { # name cmd...: run one part, remember a failure, go on
    local name=$1
    shift
    say "$name"
    "$@" || { say "$name: FAILED"; rc=1; }
}
part "cb_bench (micro, scaling, semantics, trip latency)" \
    bench/with_cbd.sh bench "$build/cb_bench" "${quick[@]}" --json "$out/libcb.json"
part "trip latency under default scheduling (the comparison)" \
    env CBD_SCHED=default bench/with_cbd.sh trip "$build/cb_bench" --trip-only "${quick[@]}" --json "$out/trip_default.json"
part "cb_bench --throughput (cbd with 16 lanes of 65536 events, 1 ms drain)" \
    env CBD_ARGS="--lanes 16 --lane-capacity 65536 --drain-interval-ms 1" \
    bench/with_cbd.sh tput "$build/cb_bench" --throughput "${quick[@]}" --json "$out/throughput.json"
if ((${#quick[@]} == 0)) && command -v valgrind >/dev/null; then
    part "cb_bench --instr under callgrind" \
        bench/with_cbd.sh instr valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
        "$build/cb_bench" --instr
    if [[ -f $out/callgrind.out ]]; then
        callgrind_annotate --inclusive=yes --threshold=100 "$out/callgrind.out" >"$out/callgrind.txt" 2>/dev/null || rc=1
        rm -f "$out/callgrind.out"
    fi
fi
part "cb_bench_remote (Redis-per-call, DynamoDB-per-call)" \
    "$build/cb_bench_remote" "${quick[@]}" "${remote_args[@]}" --json "$out/remote.json"
if [[ -x bench/fleet_run.sh ]]; then
    part "fleet propagation (bench/fleet_run.sh)" bench/fleet_run.sh "${quick[@]}" --json "$out/fleet.json"
else
    say "bench/fleet_run.sh not there yet: fleet propagation skipped"
fi
# ---- one host at scale ------------------------------------------------------
if ((${#quick[@]})); then
    scale=(--circuits 2000 --threads 64 --capacity 2048 --lanes 128 --window-s 1 --storm 500)
else
    scale=(--circuits 100000 --threads 1024 --capacity 100000 --lanes 1100 --window-s 10 --storm 10000)
fi
scale_md=$out/scale.md
part "scale_bench (${scale[1]} circuits, ${scale[3]} threads)" \
    env CBD_ARGS="--capacity ${scale[5]} --lanes ${scale[7]} --lane-capacity 4096" \
    bench/with_cbd.sh scale bash -c '"$@" >"$0"; rc=$?; cat "$0"; exit $rc' "$scale_md" \
    "$build/scale_bench" "${scale[@]}" --cbctl "$build/cbctl" --json "$out/scale.json"
part "report" /usr/bin/python3 bench/report.py "$out"
# results.json holds every part's figures: drop the parts and the logs.
((keep)) && rm -f "$out"/{libcb,trip_default,throughput,remote,fleet}.json "$out"/{callgrind.txt,redis.log,dynalite.log}
((keep)) && say "results in $out (results.md, results.json, *.png)"
((keep)) || cat "$out/results.md"
exit "$rc"
