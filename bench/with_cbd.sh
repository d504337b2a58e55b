#!/usr/bin/env bash
# with_cbd.sh - run one command against a throwaway cbd.
#
#   bench/with_cbd.sh NAME CMD [ARGS...]
#
# Starts $CB_BUILD_DIR/cbd (default build/cbd) on a fresh instance
# NAME-<pid>, with its control socket, local state file and log in a
# temporary directory (no external service), waits until it listens, runs
# CMD with CB_INSTANCE set to that instance, then stops the daemon by its pid
# (SIGTERM, wait) and removes the temporary directory and the shm objects
# (cbd keeps them on a clean stop so that a restart adopts them).
#
# Exit status: CMD's, or 1 when cbd does not come up or does not stop
# cleanly. On failure the end of cbd's log is printed.
#
# Environment:
#   CB_BUILD_DIR    where cbd was built (default: build)
#   CBD_ARGS        extra options for cbd (word-split), e.g. "--log-level debug"
#   CBD_SHOW_LOG    a grep pattern: matching lines of cbd's log are printed
#                   after the run (the demo shows the transition lines)
#   CBD_SCHED       cbd's CPU scheduling:
#                     unset or "default": what this shell has (the tests, the demo);
#                     "unit": what systemd/cbd.service gives it - its Nice=,
#                       CPUSchedulingPolicy=, CPUSchedulingPriority= and
#                       CPUSchedulingResetOnFork= lines, applied as systemd
#                       applies them, before exec, so that every thread has
#                       them (bench/run.sh: the bench measures what a
#                       deployment gets);
#                     else the same directives inline, e.g. "Nice=-10" or
#                       "CPUSchedulingPolicy=fifo CPUSchedulingPriority=1".
#                   Raising a priority needs root (or CAP_SYS_NICE, RLIMIT_NICE
#                   / RLIMIT_RTPRIO): without it cbd runs with the default
#                   scheduling and a warning says so.
set -euo pipefail

(($# >= 2)) || { echo "usage: $0 NAME CMD [ARGS...]" >&2; exit 2; }
name=$1
shift
build=${CB_BUILD_DIR:-build}
cbd=$build/cbd
[[ -x $cbd ]] || { echo "with_cbd: $cbd not found: build first (./scripts/setup.sh)" >&2; exit 1; }

instance=$name-$$
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cbd-$name.XXXXXX")
log=$tmp/cbd.log
pid=

say() { printf '%s: %s\n' "$name" "$*" >&2; }

# The directives CBD_SCHED names, one per line.
sched_directives() {
    case ${CBD_SCHED:-default} in
    default) ;;
    unit) grep -E '^(Nice|CPUScheduling[A-Za-z]+)=' "$(dirname "$0")/../systemd/cbd.service" || true ;;
    *) tr -s ' ' '\n' <<<"$CBD_SCHED" ;;
    esac
}

# Fills the array sched with the command prefix (nice, chrt) that starts
# cbd under CBD_SCHED, or leaves it empty with a warning when this user may
# not raise cbd's priority.
sched=()
sched_prefix() {
    local line key value policy=other prio=0 nice= reset=no
    while read -r line; do
        [[ -n $line ]] || continue
        key=${line%%=*} value=${line#*=}
        case $key in
        Nice) nice=$value ;;
        CPUSchedulingPolicy) policy=$value ;;
        CPUSchedulingPriority) prio=$value ;;
        CPUSchedulingResetOnFork) reset=$value ;;
        *) say "CBD_SCHED: unknown directive '$line'"; exit 2 ;;
        esac
    done < <(sched_directives)
    local p=()
    [[ -z $nice ]] || p+=(nice -n "$nice")
    case $policy in
    fifo | rr) ;;
    other | batch | idle) prio=0 ;;
    *) say "CBD_SCHED: unknown CPUSchedulingPolicy '$policy'"; exit 2 ;;
    esac
    if [[ $policy != other || $reset == yes ]]; then
        p+=(chrt)
        [[ $reset != yes ]] || p+=(--reset-on-fork)
        p+=("--$policy" "$prio")
    fi
    ((${#p[@]})) || return 0
    # nice only warns when it may not lower the niceness: compare what it got.
    local want got
    want=$(($(nice) + ${nice:-0})) want=$((want < -20 ? -20 : want > 19 ? 19 : want))
    if got=$("${p[@]}" nice 2>/dev/null) && [[ $got == "$want" ]]; then
        sched=("${p[@]}")
        say "cbd's scheduling: ${p[*]}"
    else
        say "WARNING: cannot give cbd the scheduling '$(sched_directives | paste -sd' ')' (raising a priority needs" \
            "root or CAP_SYS_NICE): cbd runs with the default scheduling, so its trip latencies are not a deployment's"
    fi
}

show_log_tail() {
    say "last lines of cbd's log ($log):"
    tail -n 20 "$log" | sed 's/^/    /' >&2
}

cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -f "/dev/shm/cbd.$instance" "/dev/shm/cbd.$instance.lanes"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sched_prefix
# shellcheck disable=SC2086 # CBD_ARGS is a list of options on purpose
"${sched[@]}" "$cbd" --instance "$instance" --socket "$tmp/cbd.sock" --store "local:$tmp/cbd.state" ${CBD_ARGS:-} 2>"$log" &
pid=$!
say "started cbd (pid $pid, instance $instance, socket $tmp/cbd.sock)"

# cbd listens on its socket only once the segment is published and the store
# restored; the client then waits for the segment's ready flag itself.
for ((i = 0; i < 200; i++)); do
    [[ -S $tmp/cbd.sock ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" && rc=0 || rc=$?
        pid=
        say "cbd exited with status $rc before it was ready"
        show_log_tail
        exit 1
    fi
    sleep 0.05
done
if [[ ! -S $tmp/cbd.sock ]]; then
    say "cbd did not open its socket within 10 s"
    show_log_tail
    exit 1
fi

rc=0
CB_INSTANCE=$instance "$@" || rc=$?

kill -TERM "$pid"
stopped=0
for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { stopped=1; break; }
    sleep 0.05
done
if ((stopped)); then
    wait "$pid" && cbd_rc=0 || cbd_rc=$?
else
    say "cbd did not stop within 5 s of SIGTERM; killing it"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    cbd_rc=137
fi
pid=
say "stopped cbd (exit status $cbd_rc)"

if [[ -n ${CBD_SHOW_LOG:-} ]]; then
    say "cbd's log, lines matching '$CBD_SHOW_LOG':"
    grep -E -- "$CBD_SHOW_LOG" "$log" | sed 's/^/    /' >&2 || true
fi
if ((cbd_rc != 0)); then
    show_log_tail
    ((rc != 0)) || rc=1
elif ((rc != 0)); then
    show_log_tail
fi
exit "$rc"
