"""Every behaviour of Powertools' circuit_breaker (shared/POWERTOOLS.md), through cbd's decorator.

Each test uses its own circuit on the session's real cbd; time-dependent
steps wait for the state cbd publishes (wait_for), never for a fixed time
alone.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time

import pytest

import cbd
from cbd import (
    CircuitBreakerConfig,
    CircuitBreakerConfigError,
    CircuitBreakerOpenError,
    CircuitInfo,
    CircuitState,
    CircuitTransition,
    circuit_breaker,
)
from conftest import wait_for


class Down(Exception):
    pass


def counted(c: cbd.Circuit) -> int:
    i = c.info()
    return i.total_successes + i.total_failures + i.total_ignored


def settle(c: cbd.Circuit, n: int) -> None:
    """Wait until cbd has counted n outcomes of c."""
    wait_for(lambda: counted(c) >= n, what=f"cbd to count {n} outcomes of {c.name}")


def flaky(calls: list):
    def call(ok: bool = True, exc: BaseException = None):
        calls.append(ok)
        if exc is not None:
            raise exc
        if not ok:
            raise Down("downstream down")
        return "downstream"

    return call


def fail(f, n: int, exc_type=Down) -> None:
    for _ in range(n):
        with pytest.raises(exc_type):
            f(False)


def test_a_success_returns_the_result_and_the_circuit_stays_closed(client, name):
    calls = []
    f = circuit_breaker(name)(flaky(calls))
    assert f() == "downstream"
    c = client.circuit(name)
    settle(c, 1)
    assert c.info().state is CircuitState.CLOSED and calls == [True]


def test_it_trips_after_exactly_failure_threshold_consecutive_failures(client, name):
    f = circuit_breaker(name, config=CircuitBreakerConfig(failure_threshold=5))(flaky([]))
    c = client.circuit(name)
    fail(f, 4)
    settle(c, 4)
    assert c.info().state is CircuitState.CLOSED
    assert c.info().failure_count == 4
    fail(f, 1)
    info = wait_for(lambda: (i := c.info()).state is CircuitState.OPEN and i, what="the trip")
    assert info.failure_count == 5
    assert abs(info.opened_at - time.time()) < 5


def test_a_counted_failure_reraises_the_original_exception(client, name):
    f = circuit_breaker(name)(flaky([]))
    err = Down("the one")
    with pytest.raises(Down) as caught:
        f(exc=err)
    assert caught.value is err


def test_an_open_circuit_raises_open_error_with_powertools_message_and_the_info(client, name):
    f = circuit_breaker(name, config=CircuitBreakerConfig(failure_threshold=2))(flaky([]))
    fail(f, 2)
    c = client.circuit(name)
    wait_for(lambda: c.info().state is CircuitState.OPEN)
    with pytest.raises(CircuitBreakerOpenError) as caught:
        f()
    e = caught.value
    assert str(e) == f"Circuit '{name}' is open."
    assert isinstance(e.circuit, CircuitInfo) and e.circuit is e.info
    assert (e.circuit.name, e.circuit.state, e.circuit.failure_count) == (name, CircuitState.OPEN, 2)
    assert e.circuit.opened_at == c.info().opened_at
    assert isinstance(e, cbd.CircuitBreakerError)


def test_a_rejected_call_never_runs_the_function(client, name):
    calls = []
    f = circuit_breaker(name, config=CircuitBreakerConfig(failure_threshold=1))(flaky(calls))
    fail(f, 1)
    wait_for(lambda: client.circuit(name).info().state is CircuitState.OPEN)
    for _ in range(10):
        with pytest.raises(CircuitBreakerOpenError):
            f(True)
    assert calls == [False]


def test_the_fallback_gets_the_calls_arguments_and_the_info_and_its_value_is_the_calls(client, name):
    seen = []

    def fallback(order, *, priority, circuit):
        seen.append((order, priority, circuit))
        return {"queued": order}

    @circuit_breaker(name, on_circuit_open=fallback, config=CircuitBreakerConfig(failure_threshold=1))
    def charge(order, *, priority):
        raise Down(order)

    with pytest.raises(Down):
        charge(1, priority="high")
    wait_for(lambda: client.circuit(name).info().state is CircuitState.OPEN)
    assert charge(2, priority="low") == {"queued": 2}
    (order, priority, info), = seen
    assert (order, priority) == (2, "low")
    assert info.name == name and info.state is CircuitState.OPEN and info.failure_count == 1


def test_a_success_resets_the_failure_streak(client, name):
    f = circuit_breaker(name, config=CircuitBreakerConfig(failure_threshold=3))(flaky([]))
    c = client.circuit(name)
    fail(f, 2)
    f(True)
    fail(f, 2)
    settle(c, 5)
    assert c.info().state is CircuitState.CLOSED and c.info().failure_count == 2
    fail(f, 1)
    wait_for(lambda: c.info().state is CircuitState.OPEN)


def test_an_ignored_exception_propagates_and_leaves_the_streak_alone(client, name):
    cfg = CircuitBreakerConfig(failure_threshold=3, ignored_exceptions=KeyError)
    f = circuit_breaker(name, config=cfg)(flaky([]))
    c = client.circuit(name)
    fail(f, 2)
    with pytest.raises(KeyError):
        f(exc=KeyError("x"))
    settle(c, 3)
    i = c.info()
    assert i.state is CircuitState.CLOSED and i.failure_count == 2 and i.total_ignored == 1
    fail(f, 1)
    wait_for(lambda: c.info().state is CircuitState.OPEN)


def test_with_handled_exceptions_only_those_count_as_failures(client, name):
    cfg = CircuitBreakerConfig(failure_threshold=2, handled_exceptions=(TimeoutError, ConnectionError))
    f = circuit_breaker(name, config=cfg)(flaky([]))
    c = client.circuit(name)
    for _ in range(5):
        fail(f, 1)  # Down is not in the allow list
    with pytest.raises(ConnectionRefusedError):  # a subclass counts
        f(exc=ConnectionRefusedError())
    settle(c, 6)
    assert c.info().state is CircuitState.CLOSED and c.info().failure_count == 1
    with pytest.raises(TimeoutError):
        f(exc=TimeoutError())
    wait_for(lambda: c.info().state is CircuitState.OPEN)


def test_exceptions_that_are_not_exception_subclasses_never_count(client, name):
    f = circuit_breaker(name, config=CircuitBreakerConfig(failure_threshold=1))(flaky([]))
    c = client.circuit(name)
    with pytest.raises(KeyboardInterrupt):
        f(exc=KeyboardInterrupt())
    settle(c, 1)
    assert c.info().state is CircuitState.CLOSED and c.info().total_ignored == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"handled_exceptions": ValueError, "ignored_exceptions": KeyError}, "mutually exclusive"),
        ({"failure_threshold": 0}, "failure_threshold must be an integer in 1..1000000"),
        ({"failure_threshold": "5"}, "failure_threshold must be an integer"),
        ({"success_threshold": True}, "success_threshold must be an integer"),
        ({"recovery_timeout": 0}, "recovery_timeout must be a positive number of seconds"),
        ({"recovery_timeout": 10**9}, "recovery_timeout must be in"),
        ({"local_cache_max_age": -1}, "local_cache_max_age must be a non-negative integer"),
        ({"handled_exceptions": "ValueError"}, "handled_exceptions must be an exception type"),
        ({"ignored_exceptions": ()}, "ignored_exceptions must contain at least one exception type"),
        ({"handled_exceptions": (ValueError, int)}, "must contain only exception types"),
        ({"half_open_max_probes": 5000}, "half_open_max_probes must be an integer in 1..1024"),
        ({"no_such_option": 1}, "unknown circuit breaker option 'no_such_option'"),
        ({"recovery_timeout": 5, "recovery_timeout_ms": 5000}, "name one option"),
    ],
)
def test_a_bad_configuration_is_a_config_error_naming_the_option(kwargs, message):
    with pytest.raises(CircuitBreakerConfigError, match=message):
        CircuitBreakerConfig(**kwargs)


def test_exception_lists_take_one_type_or_any_iterable():
    assert CircuitBreakerConfig(handled_exceptions=ValueError).handled_exceptions == (ValueError,)
    assert CircuitBreakerConfig(ignored_exceptions=[KeyError, IndexError]).ignored_exceptions == (KeyError, IndexError)


def test_cbds_further_policy_options_are_accepted_by_keyword_and_reach_cbd(client, name):
    cfg = CircuitBreakerConfig(failure_threshold=7, recovery_timeout=2.5, half_open_max_probes=3, probe_lease_ms=900)
    circuit_breaker(name, config=cfg)(flaky([]))
    got = client.circuit(name).info().config
    assert got == {**{f: p.default for f, p in cbd.POLICY_FIELDS.items()}, "failure_threshold": 7,
                   "recovery_timeout_ms": 2500, "half_open_max_probes": 3, "probe_lease_ms": 900}
    assert set(got) == set(cbd.POLICY_FIELDS)  # every field of libcb's table, none spelled here


def open_then_wait_recovery(f, c: cbd.Circuit, failures: int) -> CircuitInfo:
    """Trip c with f, wait until cbd moved it to HALF_OPEN (its recovery timer); the OPEN info."""
    fail(f, failures)
    info = wait_for(lambda: (i := c.info()).state is CircuitState.OPEN and i, what="OPEN")
    wait_for(lambda: time.time() >= info.open_until, what="the recovery timeout")
    wait_for(lambda: c.info().state is CircuitState.HALF_OPEN, what="HALF_OPEN")
    return info


def test_after_the_recovery_timeout_one_probe_runs_and_every_other_call_is_rejected(client, name):
    release = threading.Event()
    entered = threading.Event()
    calls = []

    @circuit_breaker(name, on_circuit_open=lambda *a, circuit, **k: ("fallback", circuit.state),
                     config=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=0.2, success_threshold=1))
    def call(ok=True):
        calls.append(ok)
        if not ok:
            raise Down()
        entered.set()
        release.wait(10)
        return "downstream"

    c = client.circuit(name)
    with pytest.raises(Down):
        call(False)
    info = wait_for(lambda: (i := c.info()).state is CircuitState.OPEN and i)
    assert call() == ("fallback", CircuitState.OPEN)  # before the timeout: rejected
    wait_for(lambda: time.time() >= info.open_until)
    wait_for(lambda: c.info().state is CircuitState.HALF_OPEN, what="HALF_OPEN")
    results = []
    probe = threading.Thread(target=lambda: results.append(call()))
    probe.start()
    assert entered.wait(5)
    others = [call() for _ in range(20)]  # while the probe is in flight
    release.set()
    probe.join()
    assert results == ["downstream"]
    assert all(r == ("fallback", CircuitState.HALF_OPEN) for r in others)
    assert calls == [False, True]
    wait_for(lambda: c.info().state is CircuitState.CLOSED)


def test_success_threshold_consecutive_probe_successes_close_the_circuit(client, name):
    cfg = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=0.2, success_threshold=3)
    f = circuit_breaker(name, on_circuit_open=lambda *a, **k: "fallback", config=cfg)(flaky([]))
    c = client.circuit(name)
    open_then_wait_recovery(f, c, 1)
    ran = 0
    deadline = time.monotonic() + 10
    while c.info().state is not CircuitState.CLOSED and time.monotonic() < deadline:
        if f() == "downstream":
            ran += 1
            assert ran <= 3
        time.sleep(0.001)
    assert ran == 3 and c.info().state is CircuitState.CLOSED


def test_one_probe_failure_reopens_with_a_new_opened_at(client, name):
    cfg = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=1, success_threshold=2)
    calls = []
    f = circuit_breaker(name, on_circuit_open=lambda *a, **k: "fallback", config=cfg)(flaky(calls))
    c = client.circuit(name)
    first = open_then_wait_recovery(f, c, 1)
    with pytest.raises(Down):  # the probe
        f(False)
    reopened = wait_for(lambda: (i := c.info()).state is CircuitState.OPEN and i, what="reopen")
    assert reopened.epoch > first.epoch and reopened.opened_at >= first.opened_at
    assert reopened.open_until > first.open_until
    assert f() == "fallback"


def test_on_transition_receives_every_transition_of_its_circuit_in_order(client, name):
    seen = []
    cfg = CircuitBreakerConfig(failure_threshold=2, recovery_timeout=0.2, success_threshold=1)
    f = circuit_breaker(name, on_transition=seen.append, on_circuit_open=lambda *a, **k: "fallback", config=cfg)(
        flaky([]))
    other = circuit_breaker(name + "-other", config=CircuitBreakerConfig(failure_threshold=1))(flaky([]))
    c = client.circuit(name)
    fail(f, 2)                                  # CLOSED -> OPEN
    fail(other, 1)                              # another circuit: not ours
    wait_for(lambda: c.info().state is CircuitState.OPEN)
    wait_for(lambda: c.info().state is CircuitState.HALF_OPEN, what="HALF_OPEN")
    with pytest.raises(Down):                   # HALF_OPEN -> OPEN
        f(False)
    wait_for(lambda: c.info().state is CircuitState.OPEN)
    wait_for(lambda: c.info().state is CircuitState.HALF_OPEN, what="HALF_OPEN again")
    assert f() == "downstream"  # OPEN -> HALF_OPEN -> CLOSED
    wait_for(lambda: len(seen) >= 5, what="5 transitions")
    assert [(t.from_state, t.to_state) for t in seen] == [
        ("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED"),
    ]
    assert all(isinstance(t, CircuitTransition) and t.circuit_name == name for t in seen)
    assert seen[0].opened_at and seen[0].failure_count == 2 and seen[0].source == "local"
    assert seen[2].opened_at >= seen[0].opened_at and seen[4].opened_at is None
    assert [t.epoch for t in seen] == sorted(t.epoch for t in seen)
    time.sleep(0.1)
    assert len(seen) == 5


def test_a_raising_or_slow_on_transition_hook_never_affects_calls(client, name, caplog):
    slow_started = threading.Event()

    def hook(t):
        slow_started.set()
        time.sleep(1.0)
        raise RuntimeError("hook broke")

    cfg = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60)
    f = circuit_breaker(name, on_transition=hook, on_circuit_open=lambda *a, **k: "fallback", config=cfg)(flaky([]))
    fail(f, 1)
    assert slow_started.wait(5)
    t0 = time.monotonic()
    results = [f() for _ in range(1000)]  # while the hook sleeps
    assert time.monotonic() - t0 < 0.5
    assert set(results) == {"fallback"}
    wait_for(lambda: any("hook broke" in r.getMessage() or (r.exc_info and "hook broke" in str(r.exc_info[1]))
                         for r in caplog.records), timeout=5, what="the hook's error logged")


def test_concurrent_failing_threads_trip_the_circuit_once(client, name):
    seen = []
    cfg = CircuitBreakerConfig(failure_threshold=5, recovery_timeout=60)
    f = circuit_breaker(name, on_transition=seen.append, on_circuit_open=lambda *a, **k: "fallback", config=cfg)(
        flaky([]))
    go = threading.Event()

    def worker():
        go.wait()
        for _ in range(50):
            try:
                f(False)
            except Down:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    c = client.circuit(name)
    info = wait_for(lambda: (i := c.info()).state is CircuitState.OPEN and i, what="the trip")
    assert info.failure_count == 5
    time.sleep(0.2)
    assert [(t.from_state, t.to_state) for t in seen] == [("CLOSED", "OPEN")]


def test_async_functions_trip_reject_and_fall_back_like_sync_ones(client, name):
    calls = []

    async def fallback(x, circuit):
        await asyncio.sleep(0)
        return ("fallback", x, circuit.state)

    @circuit_breaker(name, on_circuit_open=fallback,
                     config=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=0.2, success_threshold=1))
    async def fetch(x):
        await asyncio.sleep(0)
        calls.append(x)
        if x < 0:
            raise Down(x)
        return x

    assert inspect.iscoroutinefunction(fetch)
    c = client.circuit(name)

    async def scenario():
        assert await fetch(1) == 1
        for _ in range(2):
            with pytest.raises(Down):
                await fetch(-1)
        await asyncio.sleep(0)
        info = c.info()
        while info.state is not CircuitState.OPEN:
            await asyncio.sleep(0.005)
            info = c.info()
        assert await fetch(2) == ("fallback", 2, CircuitState.OPEN)
        while (await fetch(3)) != 3:  # after the recovery timeout: the probe
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert calls == [1, -1, -1, 3]
    wait_for(lambda: c.info().state is CircuitState.CLOSED)


def test_an_async_function_rejected_without_fallback_raises_open_error(client, name):
    @circuit_breaker(name, config=CircuitBreakerConfig(failure_threshold=1))
    async def fetch():
        raise Down()

    with pytest.raises(Down):
        asyncio.run(fetch())
    wait_for(lambda: client.circuit(name).info().state is CircuitState.OPEN)
    with pytest.raises(CircuitBreakerOpenError, match=f"Circuit '{name}' is open."):
        asyncio.run(fetch())


def test_methods_get_their_instance_and_share_one_circuit(client, name):
    class Api:
        def __init__(self, tag):
            self.tag = tag

        @circuit_breaker(name, on_circuit_open=lambda self, ok, circuit: f"fallback-{self.tag}",
                         config=CircuitBreakerConfig(failure_threshold=2))
        def call(self, ok):
            if not ok:
                raise Down(self.tag)
            return f"ok-{self.tag}"

    a, b = Api("a"), Api("b")
    assert a.call(True) == "ok-a" and b.call(True) == "ok-b"
    with pytest.raises(Down):
        a.call(False)
    with pytest.raises(Down):
        b.call(False)
    wait_for(lambda: client.circuit(name).info().state is CircuitState.OPEN)
    assert a.call(True) == "fallback-a" and Api.call(b, True) == "fallback-b"


def test_the_wrapper_looks_like_the_function(name):
    def charge(order: dict, amount: int = 1) -> str:
        """Charge an order."""
        return "x"

    w = circuit_breaker(name)(charge)
    assert (w.__name__, w.__doc__, w.__wrapped__, w.__module__) == ("charge", "Charge an order.", charge, __name__)
    assert inspect.signature(w) == inspect.signature(charge)
    assert functools.reduce(lambda a, _: a, [w])(order={}) == "x"


def test_local_cache_max_age_is_accepted_and_persistence_store_is_ignored_with_a_warning(client, name):
    class DynamoDBPersistence:  # stands for Powertools' store object
        table_name = "CircuitBreakerState"

    with pytest.warns(UserWarning, match="persistence_store is ignored"):
        f = circuit_breaker(name, persistence_store=DynamoDBPersistence(),
                            config=CircuitBreakerConfig(local_cache_max_age=0))(flaky([]))
    assert f() == "downstream"


def test_the_fallbacks_info_follows_the_circuit_across_a_reopen(client, name):
    infos = []
    cfg = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=0.3, success_threshold=1)
    f = circuit_breaker(name, on_circuit_open=lambda ok, circuit: infos.append(circuit) or "fallback",
                        config=cfg)(flaky([]))
    c = client.circuit(name)
    first = open_then_wait_recovery(f, c, 1)
    with pytest.raises(Down):  # the probe fails: OPEN again, a new epoch
        f(False)
    wait_for(lambda: c.info().state is CircuitState.OPEN)
    assert f(True) == "fallback" and f(True) == "fallback"
    assert infos[0] is infos[1]  # unchanged circuit: the same immutable snapshot
    assert infos[0].epoch > first.epoch and infos[0].state is CircuitState.OPEN
    assert infos[0].open_until > first.open_until
    wait_for(lambda: c.info().state is CircuitState.HALF_OPEN)
    assert f(True) == "downstream"
