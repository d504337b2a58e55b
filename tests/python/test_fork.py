"""Prefork: a client opened before fork() and one opened in each child both work, host-wide.

Children are plain os.fork() children, as a prefork server makes them; each
reports back through a pipe and leaves with os._exit.
"""

from __future__ import annotations

import json
import os
import time

import cbd
from cbd import CircuitBreakerConfig, CircuitState, circuit_breaker
from conftest import wait_for


def in_children(n: int, body) -> list:
    """Fork n children running body(i) -> JSON-able; their results in order."""
    pipes, pids = [], []
    for i in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                out = json.dumps(body(i)).encode()
            except BaseException as e:  # the parent asserts on it
                out, code = json.dumps({"error": repr(e)}).encode(), 1
            os.write(w, out)
            os._exit(code)
        os.close(w)
        pipes.append(r)
        pids.append(pid)
    results = []
    for r, pid in zip(pipes, pids):
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        results.append(json.loads(b"".join(chunks) or b"null"))
        assert os.waitstatus_to_exitcode(status) == 0, results[-1]
    return results


def test_a_breaker_decorated_before_fork_counts_the_childrens_failures_host_wide(client, name):
    calls = []

    @circuit_breaker(name, on_circuit_open=lambda *a, circuit: "fallback",
                     config=CircuitBreakerConfig(failure_threshold=4, recovery_timeout=60))
    def call():
        calls.append(1)
        raise ValueError("down")

    def child(i):
        try:
            call()
        except ValueError:
            return "failed"

    assert in_children(4, child) == ["failed"] * 4  # one failure in each of four processes
    c = client.circuit(name)
    info = wait_for(lambda: (i := c.info()).state is CircuitState.OPEN and i, what="the host-wide trip")
    assert info.failure_count == 4 and calls == []  # the parent never called
    assert call() == "fallback"
    assert in_children(3, lambda i: call()) == ["fallback"] * 3


def test_a_client_opened_in_each_child_after_fork_works(daemon, name):
    def child(i):
        with cbd.Client(daemon.instance) as own:
            c = own.circuit(name, failure_threshold=3)
            c.record(c.allow(), cbd.Outcome.FAILURE)
            return os.getpid()

    pids = in_children(3, child)
    assert len(set(pids)) == 3
    with cbd.Client(daemon.instance) as mine:
        wait_for(lambda: mine.circuit(name).info().state is CircuitState.OPEN, what="the trip")


def test_on_transition_fires_in_a_child_that_calls_after_fork(client, name):
    r, w = os.pipe()

    def hook(t):
        os.write(w, f"{os.getpid()} {t.from_state}>{t.to_state}\n".encode())

    @circuit_breaker(name, on_transition=hook, on_circuit_open=lambda *a, circuit: "fallback",
                     config=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60))
    def call(ok):
        if not ok:
            raise ValueError()
        return "ok"

    def child(i):
        try:
            call(False)
        except ValueError:
            pass
        deadline = time.monotonic() + 5
        while call(True) != "fallback" and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the reader polls every 10 ms
        return os.getpid()

    (pid,) = in_children(1, child)
    os.close(w)
    lines = os.read(r, 65536).decode().split("\n")
    os.close(r)
    # Only the child called the function, so only its reader started: the parent fired nothing.
    assert [ln for ln in lines if ln] == [f"{pid} CLOSED>OPEN"]


def test_a_reader_running_before_fork_goes_on_in_the_parent_and_starts_again_in_the_child(client, name):
    r, w = os.pipe()
    hook = lambda t: os.write(w, f"{os.getpid()} {t.to_state}\n".encode())  # noqa: E731
    call = circuit_breaker(name, on_transition=hook, on_circuit_open=lambda *a, circuit: "fallback",
                           config=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=60))(lambda: "ok")
    assert call() == "ok"  # the parent's reader runs from here
    # cbd orders events within a process's lane, not across processes: let it
    # count the parent's success before the child's failures.
    wait_for(lambda: client.circuit(name).info().total_successes == 1, what="cbd to count the success")

    def child(i):
        assert call() == "ok"  # starts the child's reader
        c = client.circuit(name)
        c.record(c.allow(), cbd.Outcome.FAILURE)
        c.record(c.allow(), cbd.Outcome.FAILURE)
        wait_for(lambda: call() == "fallback")
        time.sleep(0.3)
        return os.getpid()

    (pid,) = in_children(1, child)
    time.sleep(0.3)
    os.close(w)
    lines = sorted(ln for ln in os.read(r, 65536).decode().split("\n") if ln)
    os.close(r)
    assert lines == sorted([f"{pid} OPEN", f"{os.getpid()} OPEN"])
