#!/usr/bin/env bash
# check.sh - check the fleet protocol model (tests/model/fleet.pml) with Spin.
#
# Each run generates a verifier (spin -a, with the run's -D switches),
# compiles it with gcc and runs it:
#   safety runs    assertions P1 (one probe fleet-wide) and P4 (no write
#                  about an older opening changes the store), and deadlocks;
#                  the default run must also leave no statement unreached
#                  except the lines marked "@unreached-in <proctype>"
#   liveness runs  ltl p2 (an idle host never blocks another's probe) and
#                  ltl p3 (an opening reaches every live host), under weak
#                  fairness (pan -a -f)
# and a run either must hold, or must find the violation it exists for, so
# the model provably can fail: the policy before probes on demand
# (ELECT_AT_DEADLINE) violates P2; policy.c's release at the renewal time
# violates P2 when the store answers an election later than half the lease;
# and the rules fleet.c keeps on purpose show what they cost or prevent (see
# tests/model/README.md). A run passes only if it ends as expected; a search
# cut short (depth limit) fails. For an expected violation the end of its
# counterexample is printed (spin -t, the model's printf lines).
#
# Exit status: 0 all as expected, 1 otherwise, 77 spin or gcc missing (ctest
# reports the test as skipped).
#
# Environment:
#   CB_MODEL_JOBS=N     runs at once (default 2)
#   CB_MODEL_ONLY=a,b   only the runs named
#   CB_MODEL_KEEP=DIR   keep the work (pan.c, outputs, trails) in DIR
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
model=$here/fleet.pml

for tool in spin gcc; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool is not installed; the fleet model needs spin (Debian package spin, installed by scripts/setup.sh) and gcc"
        exit 77
    fi
done

# name | kind (safety, or the ltl claim) | expected (ok, P1, P4, cycle) | spin -D switches
RUNS=(
    "safety|safety|ok|"
    "safety-3-hosts|safety|ok|-DNH=3 -DNO_PT -DMAXLOSS=0 -DMAXCRASH=0"
    "p2|p2|ok|-DBOUNDED_LATENCY"
    "p3|p3|ok|-DBOUNDED_LATENCY -DSLOW_ANSWERS"
    "p2-slow-answers|p2|ok|-DBOUNDED_LATENCY -DSLOW_ANSWERS"
    "release-before-grace|p2|cycle|-DBOUNDED_LATENCY -DSLOW_ANSWERS -DRELEASE_BEFORE_GRACE"
    "elect-at-deadline|p2|cycle|-DBOUNDED_LATENCY -DELECT_AT_DEADLINE"
    "grant-is-agreement|safety|P4|-DGRANT_IS_AGREEMENT -DNO_P1"
    "host-local-grants|safety|P1|-DHOST_LOCAL_GRANTS -DNO_P4"
    "powertools-unconditional-long-lease|safety|P1|-DPT_UNCONDITIONAL -DLEASE=3 -DNO_P4"
    "subsecond-recovery|safety|P4|-DREC=0 -DNO_P1"
)

parallel=${CB_MODEL_JOBS:-2}
work=${CB_MODEL_KEEP:-}
if [[ -n $work ]]; then
    mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/cbd-model.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi

# The model's own lines of a trail: what each process did, and the ticks.
trail_lines() {
    grep -vE '^\s*$|^ltl |^\s*[0-9]+:|^\s*[A-Za-z_]+(\[[0-9]+\])? = |^#processes|processes created|Never claim|^spin: trail|^spin: text of'
}

# Statements the default run left unreached, other than "-end-" and the
# lines marked @unreached-in <proctype>. Prints them; true if none.
coverage_ok() {
    local out=$1 bad=0 proc="" line
    while IFS= read -r line; do
        if [[ $line =~ ^unreached\ in\ proctype\ ([A-Za-z_]+) ]]; then
            proc=${BASH_REMATCH[1]}
        elif [[ $line =~ ^unreached\ in ]]; then
            proc=""     # init (empty) and the claims
        elif [[ -n $proc && $line =~ fleet\.pml:([0-9]+),\ state\ [0-9]+,\ \"(.*)\"$ ]]; then
            local n=${BASH_REMATCH[1]} what=${BASH_REMATCH[2]}
            [[ $what == -end- ]] && continue
            sed -n "${n}p" "$model" | grep -q "@unreached-in.*\\b$proc\\b" && continue
            echo "  unreached in $proc: fleet.pml:$n $what"
            bad=1
        fi
    done <"$out"
    return $bad
}

# One run, in its own directory; writes result (one line) and report.
run_one() {
    local name=$1 kind=$2 expect=$3 flags=$4 dir=$work/$1
    mkdir -p "$dir" && cp "$model" "$dir/fleet.pml" && cd "$dir" || return
    local cflags args
    if [[ $kind == safety ]]; then
        cflags="-DSAFETY -DNOCLAIM"
        args="-m200000 -w23"
    else
        cflags="-DNFAIR=3"
        args="-a -f -N $kind -m200000 -w23"
    fi
    # An expected violation's search is short: a quick compile will do.
    local opt=-O1
    [[ $expect != ok ]] && opt=-O0
    # shellcheck disable=SC2086
    if ! spin -a $flags fleet.pml >spin.out 2>&1 || ! gcc -w $opt $cflags -o pan pan.c >gcc.out 2>&1; then
        echo "FAIL  $name: no verifier (see $dir)" >result
        cat spin.out gcc.out >report 2>/dev/null
        return
    fi
    local t0=$SECONDS
    # shellcheck disable=SC2086
    ./pan $args >pan.out 2>&1
    local secs=$((SECONDS - t0))
    local errors states trans depth mem
    errors=$(sed -nE 's/.*errors: ([0-9]+).*/\1/p' pan.out | tail -n 1)
    states=$(sed -nE 's/^ *([0-9.e+]+) states, stored.*/\1/p' pan.out | tail -n 1)
    trans=$(sed -nE 's/^ *([0-9.e+]+) transitions.*/\1/p' pan.out | tail -n 1)
    depth=$(sed -nE 's/.*depth reached ([0-9]+).*/\1/p' pan.out | tail -n 1)
    mem=$(sed -nE 's/^ *([0-9.]+)\s+total actual memory usage.*/\1/p' pan.out | tail -n 1)
    local figures
    figures=$(printf '%9s states %10s transitions  depth %6s  %7s MB  %3d s' \
        "${states:-?}" "${trans:-?}" "${depth:-?}" "${mem:-?}" "$secs")
    local verdict=FAIL why=""
    if [[ -z $errors ]]; then
        why="pan did not finish"
    elif grep -q "max search depth too small" pan.out; then
        why="the search was cut short (depth limit)"
    elif [[ $expect == ok ]]; then
        if [[ $errors != 0 ]]; then
            why="$(grep -m1 -E 'assertion violated|acceptance cycle|invalid end state|error:' pan.out)"
        elif [[ $name == safety ]] && ! coverage_ok pan.out >coverage; then
            why="statements not reached"
        else
            verdict=ok
        fi
    else
        local pattern
        case $expect in
            P1) pattern='assertion violated.*calling' ;;
            P4) pattern='assertion violated.*b_op' ;;
            cycle) pattern='acceptance cycle' ;;
        esac
        if [[ $errors != 0 ]] && grep -qE "$pattern" pan.out; then
            verdict=ok
            why="violates $( [[ $expect == cycle ]] && echo "$kind" || echo "$expect") as expected"
        else
            why="expected a violation of $( [[ $expect == cycle ]] && echo "$kind" || echo "$expect"), found $( ((errors)) && grep -m1 -E 'assertion violated|acceptance cycle|invalid end state' pan.out || echo none)"
        fi
    fi
    printf '%-4s  %-36s %s  %s\n' "$verdict" "$name" "$figures" "$why" >result
    {
        [[ -s coverage ]] && cat coverage
        if [[ $expect != ok && $errors != 0 && -f fleet.pml.trail ]]; then
            echo "  counterexample ($name, last steps; spin -t -T $flags fleet.pml in $dir):"
            # shellcheck disable=SC2086
            spin -t -T $flags fleet.pml 2>&1 | trail_lines | tail -n 24 | sed 's/^/    /'
        fi
    } >report
}

selected=()
for r in "${RUNS[@]}"; do
    IFS='|' read -r name kind expect flags <<<"$r"
    if [[ -n ${CB_MODEL_ONLY:-} && ",$CB_MODEL_ONLY," != *",$name,"* ]]; then
        continue
    fi
    selected+=("$name")
    while (($(jobs -rp | wc -l) >= parallel)); do
        wait -n
    done
    (run_one "$name" "$kind" "$expect" "$flags") &
done
wait

echo "spin $(spin -V | sed -nE 's/^Spin Version ([0-9.]+).*/\1/p'), $(nproc) cores, work in $work"
failed=0
for name in "${selected[@]}"; do
    if [[ -f $work/$name/result ]]; then
        cat "$work/$name/result"
        [[ -s $work/$name/report ]] && cat "$work/$name/report"
        grep -q '^ok' "$work/$name/result" || failed=$((failed + 1))
    else
        echo "FAIL  $name: no result"
        failed=$((failed + 1))
    fi
done
if ((${#selected[@]} == 0)); then
    echo "no run named in CB_MODEL_ONLY=$CB_MODEL_ONLY"
    exit 1
fi
echo "model: ${#selected[@]} runs, $failed not as expected"
((failed == 0))
