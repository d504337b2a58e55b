"""The lower-level API: a Client per cbd instance, a Circuit per name.

    client = cbd.Client()                          # $CB_INSTANCE or "default"
    payments = client.circuit("payments", failure_threshold=10)
    with payments.guard():                         # raises CircuitBreakerOpenError if rejected
        charge()

    ticket = payments.allow()                      # or by hand
    if ticket:
        try: charge()
        except Exception as e: payments.record(ticket, payments.classify(e)); raise
        else: payments.record(ticket, cbd.Outcome.SUCCESS)

A Client may be opened before fork() (a prefork master) and used in the
children: libcb gives each process its own lanes and control connection.
``default_client()`` is the one the decorator uses: opened on first use,
retried (at most once a second) while cbd cannot be reached.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from types import TracebackType
from typing import Any, Dict, List, Optional, Type

from . import _cbd
from ._dispatch import Hook, TransitionDispatcher
from ._types import CircuitBreakerConfig, CircuitInfo, CircuitTransition, Outcome, Ticket
from .errors import CircuitBreakerOpenError, CircuitBreakerPersistenceError

logger = logging.getLogger("cbd")


class Circuit:
    """One circuit of a Client. Obtain with ``Client.circuit(name, **config)``."""

    __slots__ = ("_c", "_config", "name", "client")

    def __init__(self, client: "Client", c: Any, config: CircuitBreakerConfig) -> None:
        self._c = c
        self._config = config
        self.name: str = c.name
        self.client = client

    def allow(self) -> Ticket:
        """May a call go ahead now? The ticket is true when it may; record its outcome."""
        return Ticket(self._c.allow())

    def record(self, ticket: int, outcome: "Outcome | int" = Outcome.SUCCESS) -> None:
        """Report a permitted call's outcome (SUCCESS, FAILURE or IGNORED)."""
        self._c.record(int(ticket), int(outcome))

    def classify(self, exception: Optional[BaseException]) -> Outcome:
        """The outcome an exception (or None) counts as under this circuit's exception lists."""
        return self._config.outcome(exception)

    def info(self) -> CircuitInfo:
        """A consistent snapshot of the circuit as cbd publishes it."""
        return CircuitInfo._from_tuple(self._c.info())

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.info().state

    def guard(self) -> "Guard":
        """A context manager: allow on entry (or raise CircuitBreakerOpenError), record on exit."""
        return Guard(self)

    def __repr__(self) -> str:
        return f"<cbd.Circuit {self.name!r}>"


class Guard:
    """``with circuit.guard() as ticket:`` - one call through the breaker."""

    __slots__ = ("_circuit", "ticket")

    def __init__(self, circuit: Circuit) -> None:
        self._circuit = circuit
        self.ticket: Optional[Ticket] = None

    def __enter__(self) -> Ticket:
        c = self._circuit
        ticket = Ticket(c._c.allow())
        if not ticket:
            info = c.info()
            raise CircuitBreakerOpenError(f"Circuit '{c.name}' is open.", circuit=info)
        self.ticket = ticket
        return ticket

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool:
        if self.ticket is not None:
            self._circuit._c.record(int(self.ticket), int(self._circuit._config.outcome(exc)))
            self.ticket = None
        return False


class Client:
    """A connection to one cbd instance (``cb_client_open``).

    ``instance``: None means ``$CB_INSTANCE``, else ``default``. Raises
    ``CircuitBreakerPersistenceError`` when cbd cannot be reached (``code_name``
    ``ENOENT``: not running) and ``CircuitBreakerConfigError`` for a bad
    instance name or a bad ``CB_DISABLED`` value. With ``CB_DISABLED`` or
    ``POWERTOOLS_CIRCUIT_BREAKER_DISABLED`` true, every circuit permits every
    call (a warning is issued once).

    ``transition_poll_interval``: how often (seconds) the on_transition reader
    looks at the history ring while it is idle.
    """

    def __init__(self, instance: Optional[str] = None, *, transition_poll_interval: float = 0.01) -> None:
        self._c = _cbd.Client(instance)
        self._dispatcher = TransitionDispatcher(self._c, transition_poll_interval)
        self._circuits: Dict[str, Circuit] = {}
        if self._c.status() & _cbd.STATUS_DISABLED:
            warnings.warn(
                "cbd: circuit breakers are disabled by CB_DISABLED or POWERTOOLS_CIRCUIT_BREAKER_DISABLED; "
                "every call goes ahead. Intended for development only.",
                stacklevel=2,
            )

    @property
    def instance(self) -> Optional[str]:
        return self._c.instance

    @property
    def closed(self) -> bool:
        return bool(self._c.closed)

    def circuit(self, name: str, **config: Any) -> Circuit:
        """Find or register the circuit ``name``.

        ``config``: CircuitBreakerConfig's keywords (failure_threshold,
        recovery_timeout, success_threshold, handled_exceptions or
        ignored_exceptions, and cbd's policy fields). A circuit that exists
        keeps the policy it has; the exception lists apply to this handle's
        guard() and classify().
        """
        cfg = config.pop("config", None)
        if cfg is None:
            cfg = CircuitBreakerConfig(**config)
        elif config:
            raise TypeError("pass either config= or keywords, not both")
        return self._circuit(name, cfg)

    def _circuit(self, name: str, cfg: CircuitBreakerConfig) -> Circuit:
        return Circuit(self, self._c.circuit(name, cfg.policy()), cfg)

    def status(self) -> int:
        """cb_status() flags: STATUS_RUNNING, STATUS_STALE, ... (may wait up to 2 s)."""
        return int(self._c.status())

    def on_transition(self, name: str, hook: Hook) -> None:
        """Call hook(CircuitTransition) for every transition of circuit ``name`` (see cbd._dispatch)."""
        self._dispatcher.add(name, hook)

    def start_transitions(self) -> None:
        """Start this process's transition reader now instead of on the first decorated call."""
        self._dispatcher.ensure_running()

    def read_transitions(self, timeout: float = 0.0) -> List[CircuitTransition]:
        """Read the transitions after this client's cursor (waiting up to timeout s for one).

        For a client without on_transition hooks: the hooks' reader owns the cursor.
        """
        if self._dispatcher.has_hooks():
            raise RuntimeError("this Client's transitions go to its on_transition hooks")
        batch, _ = self._c.read_transitions(timeout, 0.005)
        return [CircuitTransition._from_tuple(t) for t in batch]

    def close(self) -> None:
        """Stop the transition reader and release the client; its circuits become unusable."""
        self._dispatcher.stop()
        self._c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cbd.Client instance={self.instance!r}{' closed' if self.closed else ''}>"


_default_lock = threading.Lock()
_default: Optional[Client] = None
_default_failed_at = 0.0
_default_warned = False


def default_client() -> Optional[Client]:
    """The process-wide Client of ``$CB_INSTANCE``, opened on first use.

    None while cbd cannot be reached (retried at most once a second; a warning
    is logged the first time): decorated calls then run uncounted, as
    Powertools' do when its store cannot be read.
    """
    global _default, _default_failed_at, _default_warned
    if _default is not None and not _default.closed:
        return _default
    with _default_lock:
        if _default is not None and not _default.closed:
            return _default
        now = time.monotonic()
        if _default_failed_at and now - _default_failed_at < 1.0:
            return None
        try:
            _default = Client()
        except CircuitBreakerPersistenceError as e:
            _default_failed_at = now
            if not _default_warned:
                _default_warned = True
                logger.warning("cbd: %s; circuit breakers let every call through until cbd answers", e)
            return None
        return _default


def set_default_client(client: Optional[Client]) -> None:
    """Make ``client`` the one decorators without ``client=`` use (None: open one again on demand)."""
    global _default, _default_failed_at
    with _default_lock:
        _default, _default_failed_at = client, 0.0
