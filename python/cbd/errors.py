"""The exceptions of cbd's Python binding, with Powertools' names and messages.

``CircuitBreakerError`` formats ``message`` and ``details`` as Powertools'
does, so code that logs or matches these errors keeps working after the import
changes. ``CircuitBreakerPersistenceError`` is raised where cbd itself cannot
be reached (``cbd.Client``): cbd's daemon is what stands between a worker and
its store, so failing to reach it is this binding's persistence error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ._types import CircuitInfo


class CircuitBreakerError(Exception):
    """Base class of every error the breaker raises."""

    def __init__(self, *args: object) -> None:
        self.message = str(args[0]) if args else ""
        self.details = "".join(str(arg) for arg in args[1:]) if args[1:] else None
        super().__init__(*args)

    def __str__(self) -> str:
        if self.message and self.details:
            return f"{self.message} - ({self.details})"
        return self.message


class CircuitBreakerOpenError(CircuitBreakerError):
    """The circuit rejected the call and no ``on_circuit_open`` was given.

    The protected function did not run. ``circuit`` is the circuit's snapshot
    at rejection time (``info`` is the same object).
    """

    def __init__(self, *args: object, circuit: Optional["CircuitInfo"] = None) -> None:
        self.circuit = circuit
        super().__init__(*args)

    @property
    def info(self) -> Optional["CircuitInfo"]:
        return self.circuit


class CircuitBreakerConfigError(CircuitBreakerError, ValueError):
    """A configuration cbd or Powertools would refuse: the message names the option."""


class CircuitBreakerPersistenceError(CircuitBreakerError):
    """cbd could not be reached or answered with an error.

    ``code`` is libcb's negative error code and ``code_name`` its stable name
    (``ENOENT``: cbd is not running for this instance; ``EACCES``: join the
    daemon's group; ...).
    """

    code: Optional[int] = None
    code_name: Optional[str] = None
