#!/usr/bin/env python3
"""python_bench.py - what cbd's Python decorator adds to a call, next to a pure-Python breaker.

    bench/with_cbd.sh pybench build/python-venv/bin/python bench/python_bench.py [--quick]

(tests/python/run.sh makes build/python-venv with the package installed.)
Times, in one run and in interleaved batches, a loop of calls to an empty
function: bare, through @cbd.circuit_breaker on a CLOSED circuit, through it
on an OPEN circuit (rejected: the on_circuit_open fallback's value, and the
CircuitBreakerOpenError raised and caught), and through an in-process
breaker written here in pure Python the way pybreaker-style libraries are
(a lock, a state, a failure count, a clock read when OPEN). Each figure is
the median over batches of the time per call; "added" subtracts the bare
call of the same run. Nothing is asserted: a shared machine's times move,
ratios in one run much less.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

import cbd

CLOSED, OPEN, HALF_OPEN = 0, 1, 2


class PurePythonBreaker:
    """A per-process breaker in plain Python: the baseline."""

    def __init__(self, failure_threshold: int = 5, recovery_timeout: float = 30.0, on_open=None) -> None:
        self.lock = threading.Lock()
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.on_open = on_open

    def __call__(self, func):
        def wrapper(*args, **kwargs):
            with self.lock:
                if self.state == OPEN:
                    if time.monotonic() - self.opened_at < self.recovery_timeout:
                        if self.on_open is not None:
                            return self.on_open(*args, **kwargs)
                        raise RuntimeError("open")
                    self.state = HALF_OPEN
            try:
                result = func(*args, **kwargs)
            except Exception:
                with self.lock:
                    self.failures += 1
                    if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
                        self.state, self.opened_at, self.failures = OPEN, time.monotonic(), 0
                raise
            with self.lock:
                self.failures = 0
                if self.state == HALF_OPEN:
                    self.state = CLOSED
            return result

        return wrapper


def empty():
    return None


def fallback(circuit=None):
    return None


def loop(f, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t0) / n


def loop_raising(f, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        try:
            f()
        except Exception:
            pass
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    quick = "--quick" in sys.argv
    batch, rounds = (20_000, 7) if quick else (200_000, 21)
    tag = str(time.time_ns())
    cfg = cbd.CircuitBreakerConfig(failure_threshold=1, recovery_timeout=3600)
    closed = cbd.circuit_breaker(f"pybench-closed-{tag}", config=cfg)(empty)
    rejected_fb = cbd.circuit_breaker(f"pybench-open-{tag}", on_circuit_open=fallback, config=cfg)(empty)
    rejected_raise = cbd.circuit_breaker(f"pybench-open-{tag}", config=cfg)(empty)
    client = cbd.default_client()
    assert client is not None, "cbd is not running: run through bench/with_cbd.sh"
    c = client.circuit(f"pybench-open-{tag}")
    c.record(c.allow(), cbd.Outcome.FAILURE)
    deadline = time.monotonic() + 5
    while c.info().state is not cbd.CircuitState.OPEN and time.monotonic() < deadline:
        time.sleep(0.001)
    assert c.info().state is cbd.CircuitState.OPEN
    assert client.circuit(f"pybench-closed-{tag}").info().state is cbd.CircuitState.CLOSED

    py_closed = PurePythonBreaker()(empty)
    py_open_breaker = PurePythonBreaker(failure_threshold=1, recovery_timeout=3600, on_open=fallback)
    py_open_breaker.state, py_open_breaker.opened_at = OPEN, time.monotonic()
    py_open = py_open_breaker(empty)

    cases = [
        ("bare call", loop, empty),
        ("cbd decorator, CLOSED", loop, closed),
        ("cbd decorator, OPEN: fallback's value", loop, rejected_fb),
        ("cbd decorator, OPEN: CircuitBreakerOpenError raised and caught", loop_raising, rejected_raise),
        ("pure-Python breaker, CLOSED", loop, py_closed),
        ("pure-Python breaker, OPEN: fallback's value", loop, py_open),
    ]
    for _, run, f in cases:  # warm-up
        run(f, batch // 10)
    samples = {name: [] for name, _, _ in cases}
    for _ in range(rounds):
        for name, run, f in cases:
            samples[name].append(run(f, batch))
    med = {name: statistics.median(v) for name, v in samples.items()}
    bare = med["bare call"]
    print(f"python {sys.version.split()[0]}, libcb {cbd.libcb_version()}, {rounds} batches of {batch} calls, "
          f"medians of ns per call (interleaved)\n")
    print("| call | ns per call | added to the bare call | vs cbd CLOSED |")
    print("|---|---|---|---|")
    for name, _, _ in cases:
        added = med[name] - bare
        ratio = added / (med["cbd decorator, CLOSED"] - bare) if name != "bare call" else 0
        print(f"| {name} | {med[name]:.1f} | {'' if name == 'bare call' else f'{added:.1f}'} | "
              f"{'' if name == 'bare call' else f'{ratio:.1f}x'} |")
    closed_added = med["cbd decorator, CLOSED"] - bare
    print(f"\nCLOSED overhead: {closed_added:.1f} ns per call (target: under 150 ns): "
          f"{'met' if closed_added < 150 else 'missed'}")


if __name__ == "__main__":
    main()
