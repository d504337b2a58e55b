#!/usr/bin/python3
"""report.py - turn one bench/run.sh run into results.md, results.json and plots.

    /usr/bin/python3 bench/report.py DIR

Reads what the run left in DIR (libcb.json, trip_default.json,
throughput.json, remote.json, callgrind.txt, fleet.json, scale.json: whichever exist),
writes DIR/results.json (all of
it, plus the machine, the date, the goals and the ratios), DIR/results.md (the
table the README shows) and, with gnuplot, DIR/latency.png, DIR/trip.png and
DIR/scaling.png and DIR/circuits.png (cost vs circuits, from scale.json). Every figure is read as a ratio to a floor or a baseline
measured in the same run: absolute times on a shared machine are noisy,
ratios much less so.
"""
import json, os, platform, re, subprocess, sys, time

d = sys.argv[1]


def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


lib, tput, remote, fleet = load("libcb.json"), load("throughput.json"), load("remote.json"), load("fleet.json")
trip_default = load("trip_default.json")
scale = load("scale.json")
R = dict(lib["results"]) if lib else {}
R.update(tput["results"] if tput else {})
R.update(remote["results"] if remote else {})


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def instr_counts():
    """Instructions per call from callgrind_annotate's inclusive counts."""
    p, out = os.path.join(d, "callgrind.txt"), {}
    if not os.path.exists(p):
        return out
    for line in open(p):
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+\S*:instr_(\w+)", line)
        if m:
            out[m.group(2)] = int(m.group(1).replace(",", "")) / 500.0  # INSTR_CALLS in cb_bench.c
    return out


instr = instr_counts()
quick = bool(lib and lib.get("quick"))
meta = {
    "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    "cpu": cpu_model(),
    "cpus": os.cpu_count(),
    "kernel": platform.release(),
    "loadavg_at_report": open("/proc/loadavg").read().split()[:3],
    "command": "bench/run.sh" + (" --quick" if quick else ""),
    "quick": quick,
}


def med(k):
    return R[k]["median"] if k in R else None


def ratio(a, b):
    return a / b if a is not None and b else None


# ---- goals --------------------------------------------------------------------------------------
sem_c = (lib or {}).get("semantics_cbd", [])
sem_b = (lib or {}).get("semantics_in_process", [])
thr = (lib or {}).get("semantics_threshold", 5)
goals = []


def goal(text, value, ok):
    goals.append({"goal": text, "measured": value, "met": None if quick or ok is None else bool(ok)})


ac, bare = med("allow_closed"), med("bare_load")
if ac is not None:
    goal("cb_allow CLOSED median <= 2 ns and <= 1.5x the bare load",
         "%.2f ns, %.2fx the bare load (%.2f ns)" % (ac, ratio(ac, bare), bare), ac <= 2 and ac <= 1.5 * bare)
if med("record") is not None:
    goal("cb_record median <= 15 ns", "%.1f ns" % med("record"), med("record") <= 15)
if ac is not None and med("redis_allow") is not None:
    x = ratio(med("redis_allow"), ac)
    goal(">= 1000x faster per check than the Redis-per-call baseline", "%.0fx" % x, x >= 1000)
if sem_c:
    goal("N processes: failures to trip all = threshold (%d)" % thr,
         ", ".join("N=%d: %d (in-process: %d)" % (c["processes"], c["failures_to_trip_all"], b["failures_to_trip_all"])
                   for c, b in zip(sem_c, sem_b)),
         all(c["failures_to_trip_all"] == thr for c in sem_c))
    goal("N processes: probes in HALF_OPEN = 1",
         ", ".join("N=%d: %d (in-process: %d)" % (c["processes"], c["probes_in_half_open"], b["probes_in_half_open"])
                   for c, b in zip(sem_c, sem_b)),
         all(c["probes_in_half_open"] == 1 for c in sem_c))
for k, what in (("trip_paced", "workers pausing 50 us per check"), ("trip_spin", "workers spinning on every core")):
    if k in R:
        goal("trip latency p99 <= 250 us (%s; cbd under %s)" % (what, (lib or {}).get("trip_daemon_sched", "?")),
             "p50 %.0f us, p99 %.0f us" % (R[k]["median"], R[k]["p99"]), R[k]["p99"] <= 250)
if "trip_spin_drain" in R:  # the part cbd's scheduling decides: the workers' own wait for a CPU is not in it
    r = R["trip_spin_drain"]
    goal("workers spinning on every core: cbd begins the drain that publishes the trip within p99 <= 250 us",
         "p50 %.0f us, p99 %.0f us" % (r["median"], r["p99"]), r["p99"] <= 250)


# ---- trip latency under the deployment's scheduling and under the default one -----------------------
def trip_setting(run, role):
    """One scheduling's trip figures: p50/p99/max of each part, paced and saturated side by side."""
    res = run["results"]

    def fig(k):
        r = res.get(k)
        return {"p50": r["median"], "p99": r["p99"], "max": r["quantiles"][-1], "runs": r["samples"]} if r else None

    out = {"role": role, "scheduling": run.get("trip_daemon_sched", "unknown"), "runs": run.get("trip_runs")}
    for kind, key in (("paced", "trip_paced"), ("saturated", "trip_spin")):
        out[kind] = fig(key)
        out[kind + "_drain_began"] = fig(key + "_drain")
        out[kind + "_first_worker"] = fig(key + "_first")
    return out


trip_runs = [(lib, "deployment (systemd/cbd.service)"), (trip_default, "default scheduling (comparison)")]
trip_runs = [(run, role) for run, role in trip_runs if run and "trip_spin" in run["results"]]
trip_settings = [trip_setting(run, role) for run, role in trip_runs]

# ---- results.json ---------------------------------------------------------------------------------
doc = {"meta": meta, "goals": goals, "results": R, "trip": trip_settings, "instructions_per_call": instr,
       "libcb_run": {k: v for k, v in (lib or {}).items() if k != "results"},
       "trip_default_run": trip_default,
       "throughput_run": {k: v for k, v in (tput or {}).items() if k != "results"},
       "remote_run": {k: v for k, v in (remote or {}).items() if k != "results"},
       "fleet": fleet}
json.dump(doc, open(os.path.join(d, "results.json"), "w"), indent=1)

# ---- results.md -----------------------------------------------------------------------------------
L = []
L.append("Machine: %s, %d CPUs, Linux %s. Date: %s. Command: `%s`. Load average when the report was "
         "written: %s." % (meta["cpu"], meta["cpus"], meta["kernel"], meta["date"], meta["command"],
                           " ".join(meta["loadavg_at_report"])))
if quick:
    L.append("\n**--quick smoke run: tiny counts, the figures mean nothing.**")


def fmt_ns(v):
    return "%.2f ns" % v if v < 100 else "%.1f us" % (v / 1000) if v < 1e6 else "%.2f ms" % (v / 1e6)


L.append("\n### Per call (median and p99 over batches; the baselines' remote calls are timed one by one)\n")
L.append("| measurement | median | p99 | vs bare load | vs cb_allow CLOSED | instructions/call |")
L.append("|---|---|---|---|---|---|")
rows = [("bare_load", "bare_load"), ("empty_call", "empty_call"), ("allow_closed", "allow_closed"),
        ("allow_open", "allow_open"), ("allow_half_open", "allow_half_open"), ("record", "record"),
        ("cb_call", "cb_call"), ("inproc_allow", "mutex_allow"), ("inproc_record", "mutex_record"),
        ("redis_allow", None), ("redis_record", None), ("dynamo_allow", None)]
for k, ik in rows:
    if k not in R:
        continue
    r = R[k]
    L.append("| %s | %s | %s | %.1fx | %s | %s |" % (
        r["label"], fmt_ns(r["median"]), fmt_ns(r["p99"]), ratio(r["median"], bare) or 0,
        "%.2fx" % ratio(r["median"], ac) if ac else "",
        "%.1f" % instr[ik] if ik and ik in instr else ""))
if instr:
    L.append("\nInstructions per call: callgrind's inclusive count of a loop of 500 calls / 500 (loop "
             "overhead included, as in the bare-load row).")

if lib and "scaling_one_circuit" in lib:
    L.append("\n### Checks per second, all processes together (%d CPUs: beyond %d processes they share cores)\n"
             % (meta["cpus"], meta["cpus"]))
    L.append("| processes | cbd, one circuit | cbd, a circuit each | Redis-per-call | cbd / Redis |")
    L.append("|---|---|---|---|---|")
    rs = {x["processes"]: x["median"] for x in (remote or {}).get("redis_scaling", [])}
    for one, each in zip(lib["scaling_one_circuit"], lib["scaling_circuit_each"]):
        n = one["processes"]
        L.append("| %d | %.3g | %.3g | %s | %s |" % (n, one["median"], each["median"],
                 "%.3g" % rs[n] if n in rs else "", "%.0fx" % (one["median"] / rs[n]) if rs.get(n) else ""))

if sem_c:
    L.append("\n### N processes sharing one downstream (threshold %d)\n" % thr)
    L.append("| processes | failures until all reject: cbd | in-process breakers | probes in HALF_OPEN: cbd | "
             "in-process breakers |")
    L.append("|---|---|---|---|---|")
    for c, b in zip(sem_c, sem_b):
        L.append("| %d | %d | %d | %d | %d |" % (c["processes"], c["failures_to_trip_all"], b["failures_to_trip_all"],
                                              c["probes_in_half_open"], b["probes_in_half_open"]))

if trip_settings:
    L.append("\n### Trip latency: tripping failure's cb_record -> every worker rejects (%d runs per cell)\n"
             % lib["trip_runs"])
    L.append("Paced: %d workers, each pausing %d us (nanosleep) after every check, as a request would; saturated: %d "
             "workers spinning on cb_allow, one per CPU, so cbd has to take a CPU from one of them. p50 / p99 / max."
             "\n" % (lib["trip_paced_workers"], lib["trip_pace_us"], lib["trip_spin_workers"]))

    def cell(f):
        return "%.0f / %.0f / %.0f us" % (f["p50"], f["p99"], f["max"]) if f else ""

    L.append("| cbd's scheduling | part | paced | saturated |")
    L.append("|---|---|---|---|")
    for t in trip_settings:
        who = "%s: %s" % (t["role"], t["scheduling"])
        L.append("| %s | every worker rejects | %s | %s |" % (who, cell(t["paced"]), cell(t["saturated"])))
        L.append("| | cbd began its drain | %s | %s |" % (cell(t["paced_drain_began"]), cell(t["saturated_drain_began"])))
        L.append("| | first worker rejects | %s | %s |" % (cell(t["paced_first_worker"]),
                                                           cell(t["saturated_first_worker"])))
    L.append("\ncbd began its drain: when the doorbell's wakeup got cbd a CPU; the state word is published a few "
             "microseconds later, before the first worker rejects. After that, each worker sees it at its next check "
             "once it has a CPU itself.")
    if "process_wakeup" in R:
        w = R["process_wakeup"]
        L.append("For scale, one process waking another through a pipe: p50 %.0f us, p99 %.0f us, max %.0f us."
                 % (w["median"], w["p99"], w["quantiles"][-1]))

if "drain_cpu" in R:
    L.append("\n### Daemon throughput (one producer thread flooding cb_record; cbd with 1 ms drain)\n")
    L.append("- outcome events drained per second of daemon CPU (= on one core): median %.3g (lowest 1%%: %.3g)"
             % (R["drain_cpu"]["median"], R["drain_cpu"]["quantiles"][1]))
    L.append("- per second of wall time: median %.3g, with cbd using %.0f%% of a core (the producer is the limit)"
             % (R["drain_wall"]["median"], 100 * (tput or {}).get("daemon_cpu_share", 0)))
    if "drain_window_cpu" in R:
        L.append("- a circuit with a rate window (1,000 calls) and a slow-call rule, every outcome recorded with its "
                 "duration: median %.3g per daemon CPU second (%.2fx the plain circuit's), %.3g per second of wall time"
                 % (R["drain_window_cpu"]["median"], R["drain_window_cpu"]["median"] / R["drain_cpu"]["median"],
                    R["drain_window_wall"]["median"]))

if scale and scale.get("spread"):
    L.append("\n### Cost vs circuits: one thread calling K circuits in a scattered order (scale_bench, ns per call)\n")
    L.append("The floor is the two dependent loads cb_allow makes (handle -> state word pointer -> word), timed the "
             "same way at each K: what a bigger working set costs in cache misses is the floor's too.\n")
    L.append("| K circuits | floor | cb_allow CLOSED | vs floor | cb_record | vs floor |")
    L.append("|---|---|---|---|---|---|")
    for x in scale["spread"]:
        L.append("| %d | %.2f | %.2f | %.2fx | %.2f | %.2fx |" % (
            x["circuits"], x["floor_ns"], x["allow_ns"], x["allow_ns"] / x["floor_ns"], x["record_ns"],
            x["record_ns"] / x["floor_ns"]))

L.append("\n### Fleet propagation\n")
if fleet and fleet.get("runs"):
    runs = fleet["runs"]

    def rate(v):
        return "%.3gM" % (v / 1e6) if v >= 1e6 else "%.3gk" % (v / 1e3) if v >= 1e3 else "%.0f" % v

    L.append("bench/fleet_run.sh: %d cbd daemons on this machine (hosts A and B) sharing circuits through one store "
             "on loopback (DynamoDB: dynalite). Raw figures in results.json, key `fleet`.\n" % fleet["hosts"])
    L.append("| store | sync | rounds | trip on A seen by B: p50 / p99 | prober's close seen by the other: p50 / p99 |")
    L.append("|---|---|---|---|---|")
    for r in runs:
        p = r["propagation"]
        L.append("| %s | %d ms | %d | %s / %s | %s / %s |" % (
            r["store"], r["sync_ms"], r["rounds"], fmt_ns(p["open_a_to_b"]["median"] * 1000),
            fmt_ns(p["open_a_to_b"]["p99"] * 1000), fmt_ns(p["close_prober_to_other"]["median"] * 1000),
            fmt_ns(p["close_prober_to_other"]["p99"] * 1000)))
    L.append("\nStore requests per second, both hosts, no transitions, while workers on both hosts check (goal: "
             "independent of the check rate):\n")
    L.append("| store | sync | circuits per host | " + " | ".join(
        "at %s checks/s" % rate(t["target_checks_per_s"]) for t in runs[0]["store_traffic"]) + " | expected |")
    L.append("|---|---|---|" + "---|" * len(runs[0]["store_traffic"]) + "---|")
    for r in runs:
        L.append("| %s | %d ms | %d | %s | %.1f %s/s |" % (
            r["store"], r["sync_ms"], r["circuits"],
            " | ".join("%.1f (ran %s)" % (t["requests_per_s"], rate(t["checks_per_s"])) for t in r["store_traffic"]),
            r["expected_requests_per_s"], r["requests"]))
    L.append("\nExpected: per host and sync, one read per circuit from Redis, one BatchGetItem per 100 circuits from "
             "DynamoDB (the circuits include the propagation one). The DynamoDB store arms its next sync when a read round "
             "ends, so the round's own time stretches the period and the rate sits below the expected one.")
else:
    L.append("Not measured in this run: bench/fleet_run.sh (Redis/DynamoDB propagation A -> B, store requests per "
             "second versus the check rate) was not present; run.sh calls it with `--json DIR/fleet.json` when it is.")

L.append("\n### Goals\n")
L.append("| goal | measured | |")
L.append("|---|---|---|")
for g in goals:
    L.append("| %s | %s | %s |" % (g["goal"], g["measured"],
                                   "n/a" if g["met"] is None else "met" if g["met"] else "**missed**"))
open(os.path.join(d, "results.md"), "w").write("\n".join(L) + "\n")


# ---- plots ------------------------------------------------------------------------------------------
def plot(name, script, series):
    """series: (title, [(x, y), ...]); gnuplot reads inline data blocks."""
    body = ["set terminal pngcairo size 720,420 font ',9'" if has_cairo else "set terminal png size 720,420",
            "set output '%s'" % os.path.join(d, name), "set termoption noenhanced",
            "set key top left Left reverse box opaque", "set format x '%g'", "set grid"] + script
    data = []
    for i, (title, pts) in enumerate(series):
        data.append("$d%d << EOD\n%s\nEOD" % (i, "\n".join("%g %g" % p for p in pts)))
    body.append("plot " + ", ".join("$d%d using 1:2 with lines lw 2 title '%s'" % (i, t)
                                     for i, (t, _) in enumerate(series)))
    subprocess.run(["gnuplot"], input="\n".join(data + body), text=True, check=True)


def cdf(k, scale=1.0):
    q = R[k]["quantiles"]
    return [(v * scale, i / 100.0) for i, v in enumerate(q)]


try:
    has_cairo = "pngcairo" in subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True).stderr
    lat = [(R[k]["label"], cdf(k)) for k in ("bare_load", "allow_closed", "allow_open", "record", "inproc_allow",
                                             "redis_allow", "dynamo_allow") if k in R]
    if lat:
        plot("latency.png", ["set logscale x", "set xlabel 'ns per call (log)'",
                             "set ylabel 'fraction of batches/calls'", "set title 'Per-call cost distributions, same run'"],
             lat)
    if trip_settings:
        series = []
        for (run, role), t in zip(trip_runs, trip_settings):
            for kind, key in (("paced", "trip_paced"), ("saturated", "trip_spin")):
                q = run["results"][key]["quantiles"]
                series.append(("%s, %s" % (kind, t["scheduling"]), [(v, i / 100.0) for i, v in enumerate(q)]))
        plot("trip.png", ["set logscale x", "set xlabel 'us (log)'", "set ylabel 'fraction of runs'",
                          "set key bottom right", "set title 'Trip latency: failure recorded -> every worker rejects'"],
             series)
    if lib and "scaling_one_circuit" in lib:
        sc = [("cbd, one circuit", [(x["processes"], x["median"]) for x in lib["scaling_one_circuit"]]),
              ("cbd, a circuit each", [(x["processes"], x["median"]) for x in lib["scaling_circuit_each"]])]
        if remote and "redis_scaling" in remote:
            sc.append(("Redis-per-call", [(x["processes"], x["median"]) for x in remote["redis_scaling"]]))
        plot("scaling.png", ["set logscale xy", "set xtics (1,2,4,8)", "set xlabel 'worker processes'",
                             "set ylabel 'checks per second, total (log)'",
                             "set title 'Scaling on %d CPUs'" % meta["cpus"]], sc)
    if scale and scale.get("spread"):
        sp = scale["spread"]
        plot("circuits.png", ["set logscale xy", "set xlabel 'circuits one thread calls in turn (log)'",
                              "set ylabel 'ns per call (log)'", "set title 'Cost vs circuits, same run'"],
             [("floor: 2 dependent loads", [(x["circuits"], x["floor_ns"]) for x in sp]),
              ("cb_allow, CLOSED", [(x["circuits"], x["allow_ns"]) for x in sp]),
              ("cb_record(SUCCESS)", [(x["circuits"], x["record_ns"]) for x in sp])])
except (OSError, subprocess.CalledProcessError) as e:
    print("report.py: plots skipped: %s" % e, file=sys.stderr)
print("report.py: wrote %s/results.md and results.json" % d, file=sys.stderr)
