"""The WSGI app of the gunicorn test: every request calls one flaky downstream through cbd.

Its response is the downstream's (status and body passed through, also for
an error the downstream answered) or the fallback's (503 "fallback") when the
circuit rejects. X-Worker-Pid says which worker answered; the worker also
sends it to the downstream, with X-Called-At: when the breaker let the call
through (the request may reach a busy downstream much later). Configured by the environment: DOWNSTREAM_URL,
CIRCUIT, CB_INSTANCE.
"""

import os
import time
import urllib.error
import urllib.request

from cbd import CircuitBreakerConfig, circuit_breaker

DOWNSTREAM = os.environ["DOWNSTREAM_URL"]


class DownstreamError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


@circuit_breaker(
    os.environ["CIRCUIT"],
    on_circuit_open=lambda circuit: (503, b"fallback"),
    config=CircuitBreakerConfig(failure_threshold=5, recovery_timeout=2, success_threshold=3),
)
def call_downstream():
    # The breaker let this call through just now: say when, for the test's timeline.
    headers = {"X-Worker-Pid": str(os.getpid()), "X-Called-At": str(time.time_ns())}
    req = urllib.request.Request(DOWNSTREAM, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        raise DownstreamError(e.code, e.read()) from None


def app(environ, start_response):
    try:
        status, body = call_downstream()
    except DownstreamError as e:
        status, body = e.status, e.body
    start_response(f"{status} X", [("Content-Type", "text/plain"), ("X-Worker-Pid", str(os.getpid()))])
    return [body]
