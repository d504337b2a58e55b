"""cbd.Client, Client.circuit, Circuit.allow/record/guard/info, the disabled bypass and a missing cbd."""

from __future__ import annotations

import os
import textwrap

import pytest

import cbd
from cbd import CircuitBreakerOpenError, CircuitBreakerPersistenceError, CircuitState, Outcome
from conftest import run_python, wait_for


def test_allow_gives_a_ticket_and_record_counts_its_outcome(client, name):
    c = client.circuit(name, failure_threshold=2)
    t = c.allow()
    assert t and t.permitted and not t.probe and not t.bypass and t.epoch == 0
    c.record(t, Outcome.FAILURE)
    c.record(c.allow(), Outcome.FAILURE)
    wait_for(lambda: c.info().state is CircuitState.OPEN)
    t = c.allow()
    assert not t and not t.permitted and repr(t).startswith("Ticket(REJECTED")


def test_guard_records_success_failure_and_raises_open_error_when_rejected(client, name):
    c = client.circuit(name, failure_threshold=2, ignored_exceptions=KeyError)
    with c.guard() as ticket:
        assert ticket.permitted
    with pytest.raises(KeyError):
        with c.guard():
            raise KeyError("not the downstream's fault")
    for _ in range(2):
        with pytest.raises(ValueError):
            with c.guard():
                raise ValueError()
    wait_for(lambda: c.info().state is CircuitState.OPEN)
    i = c.info()
    assert (i.total_successes, i.total_ignored, i.total_failures) == (1, 1, 2)
    ran = []
    with pytest.raises(CircuitBreakerOpenError, match=f"Circuit '{name}' is open.") as caught:
        with c.guard():
            ran.append(1)
    assert ran == [] and caught.value.circuit.state is CircuitState.OPEN


def test_classify_follows_the_circuits_exception_lists(client, name):
    c = client.circuit(name, handled_exceptions=(TimeoutError,))
    assert c.classify(None) is Outcome.SUCCESS
    assert c.classify(TimeoutError()) is Outcome.FAILURE
    assert c.classify(ValueError()) is Outcome.IGNORED
    assert c.classify(SystemExit()) is Outcome.IGNORED


def test_an_existing_circuit_keeps_its_policy(client, name):
    client.circuit(name, failure_threshold=3)
    assert client.circuit(name, failure_threshold=9).info().config["failure_threshold"] == 3


def test_read_transitions_returns_the_clients_transitions(daemon, name):
    with cbd.Client(daemon.instance) as reader:
        c = reader.circuit(name, failure_threshold=1)
        c.record(c.allow(), Outcome.FAILURE)
        got = wait_for(lambda: [t for t in reader.read_transitions(0.05) if t.circuit_name == name])
        assert [(t.from_state, t.to_state, t.failure_count) for t in got] == [("CLOSED", "OPEN", 1)]
    assert reader.closed
    with pytest.raises(ValueError, match="closed"):
        c.allow()


def test_a_client_for_an_instance_without_cbd_is_a_persistence_error():
    with pytest.raises(CircuitBreakerPersistenceError, match="not running") as caught:
        cbd.Client("nosuchinstance")
    assert caught.value.code_name == "ENOENT"


def test_a_bad_circuit_name_is_a_config_error(client):
    with pytest.raises(cbd.CircuitBreakerConfigError):
        client.circuit("x" * 128)


DISABLED_SCRIPT = textwrap.dedent("""
    import warnings, cbd
    warnings.simplefilter("always")
    calls = []
    @cbd.circuit_breaker("disabled-check", config=cbd.CircuitBreakerConfig(failure_threshold=1))
    def f(ok):
        calls.append(ok)
        if not ok:
            raise ValueError()
        return "ran"
    for _ in range(3):
        try: f(False)
        except ValueError: pass
    print(f(True), len(calls), cbd.default_client().status() & cbd.STATUS_DISABLED != 0)
""")


@pytest.mark.parametrize("var, value", [("POWERTOOLS_CIRCUIT_BREAKER_DISABLED", "true"), ("CB_DISABLED", "1")])
def test_the_disabled_variables_bypass_every_breaker_with_a_warning(daemon, var, value):
    r = run_python(DISABLED_SCRIPT, {**daemon.env(), var: value})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ran", "4", "True"]
    assert "development only" in r.stderr


def test_a_disabled_variable_that_is_not_a_boolean_is_a_config_error(daemon):
    r = run_python(DISABLED_SCRIPT, {**daemon.env(), "CB_DISABLED": "perhaps"})
    assert r.returncode != 0 and "CircuitBreakerConfigError" in r.stderr and "CB_DISABLED" in r.stderr


def test_without_cbd_calls_go_ahead_unprotected_and_bind_when_cbd_comes(tmp_path):
    from conftest import Daemon

    later = Daemon("late")
    script = textwrap.dedent(f"""
        import time, logging, cbd
        logging.basicConfig()
        @cbd.circuit_breaker("late-bind", config=cbd.CircuitBreakerConfig(failure_threshold=1))
        def f(ok):
            if not ok: raise ValueError()
            return "ran"
        for _ in range(3):
            try: f(False)
            except ValueError: pass
        print(f(True), flush=True)
        open({str(tmp_path / 'ready')!r}, "w").close()
        while not __import__("os").path.exists({str(tmp_path / 'go')!r}): time.sleep(0.01)
        deadline = time.time() + 10
        while time.time() < deadline:   # binds within about a second once cbd answers
            try: f(False)
            except ValueError: pass
            except cbd.CircuitBreakerOpenError:
                print("open"); break
            time.sleep(0.05)
    """)
    env = {**later.env(), "CB_INSTANCE": later.instance}
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), timeout=20, what="the script's first calls")
        later.start()
        (tmp_path / "go").touch()
        out, err = p.communicate(timeout=30)
    finally:
        later.stop()
    assert out.split() == ["ran", "open"], err
    assert "calls go ahead unprotected" in err or "let every call through" in err
