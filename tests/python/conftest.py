"""Fixtures for the Python binding's tests: a real cbd per test session.

cbd is the one built with the tests ($CBD, else build/cbd; tests/python/run.sh
sets it), started on a unique instance with its socket, local state file and
log in a temporary directory, as tests/support/tsup_daemon.c does; stopped
by its pid with SIGTERM and its shared-memory objects removed afterwards.
Circuit names are unique per test, so the tests share one daemon. The
directory is removed after a clean stop unless CBD_KEEP is set.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
CBD = os.environ.get("CBD") or str(ROOT / "build" / "cbd")


class Daemon:
    """A running cbd: instance name, socket, log; start() and stop() by pid."""

    def __init__(self, tag: str, extra: Optional[List[str]] = None) -> None:
        self.instance = f"py{tag}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.dir = Path(tempfile.mkdtemp(prefix="cbd-py-"))
        self.socket = self.dir / "ctl.sock"
        self.log = self.dir / "cbd.log"
        self.extra = extra or []
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Daemon":
        args = [CBD, "--instance", self.instance, "--socket", str(self.socket),
                "--store", f"local:{self.dir / 'state'}", *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cbd exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if self.socket.exists():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"cbd did not open its socket in 15 s:\n{self.log.read_text()}")

    def stop(self) -> int:
        rc = 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        for suffix in ("", ".lanes"):
            try:
                os.unlink(f"/dev/shm/cbd.{self.instance}{suffix}")
            except FileNotFoundError:
                pass
        if rc == 0 and not os.environ.get("CBD_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        return rc

    def env(self) -> dict:
        env = dict(os.environ)
        env["CB_INSTANCE"] = self.instance
        env.pop("CB_DISABLED", None)
        env.pop("POWERTOOLS_CIRCUIT_BREAKER_DISABLED", None)
        return env


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    if not os.access(CBD, os.X_OK):
        pytest.fail(f"cbd not found at {CBD}: build it first (./scripts/setup.sh) or set CBD")
    d = Daemon("s").start()
    os.environ["CB_INSTANCE"] = d.instance
    yield d
    rc = d.stop()
    assert rc == 0, f"cbd did not stop cleanly ({rc}):\n{d.log.read_text()[-3000:]}"


@pytest.fixture(scope="session")
def client(daemon: Daemon):
    import cbd

    c = cbd.Client(daemon.instance)
    cbd.set_default_client(c)
    yield c


_names = itertools.count()


@pytest.fixture
def name(request) -> str:
    """A circuit name no other test uses."""
    return f"{request.node.name[:80]}-{next(_names)}"


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    """Poll predicate until it is true (its value is returned) or fail after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def run_python(code: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (this venv's), for behaviour fixed at start (environment)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
