"""cbd: host-wide circuit breakers in shared memory, with Powertools' API.

Moving from Powertools for AWS Lambda is one import::

    from cbd import circuit_breaker, CircuitBreakerConfig

    @circuit_breaker(name="payments", config=CircuitBreakerConfig(failure_threshold=5))
    def charge(order): ...

Every process on the host shares one circuit per name, checked with one
atomic load of cbd's shared memory (libcb); see python/README.md for what
differs from Powertools and why, and ``Client`` for the lower-level API.
"""

from . import _cbd
from ._client import Circuit, Client, Guard, default_client, set_default_client
from ._decorator import _open_error, circuit_breaker
from ._types import (
    POLICY_FIELDS,
    CircuitBreakerConfig,
    CircuitInfo,
    CircuitState,
    CircuitTransition,
    Outcome,
    PolicyField,
    Ticket,
)
from .errors import (
    CircuitBreakerConfigError,
    CircuitBreakerError,
    CircuitBreakerOpenError,
    CircuitBreakerPersistenceError,
)

_cbd._register(CircuitInfo._from_tuple, _open_error, CircuitBreakerPersistenceError, CircuitBreakerConfigError)

STATUS_RUNNING = _cbd.STATUS_RUNNING
STATUS_RESTARTED = _cbd.STATUS_RESTARTED
STATUS_STALE = _cbd.STATUS_STALE
STATUS_DISABLED = _cbd.STATUS_DISABLED
STATUS_REMAPPED = _cbd.STATUS_REMAPPED

__version__ = "0.1.0"
libcb_version = _cbd.libcb_version

__all__ = (
    "circuit_breaker",
    "CircuitBreakerConfig",
    "CircuitInfo",
    "CircuitState",
    "CircuitTransition",
    "CircuitBreakerError",
    "CircuitBreakerOpenError",
    "CircuitBreakerConfigError",
    "CircuitBreakerPersistenceError",
    "Client",
    "Circuit",
    "Guard",
    "Outcome",
    "Ticket",
    "POLICY_FIELDS",
    "PolicyField",
    "default_client",
    "set_default_client",
    "STATUS_RUNNING",
    "STATUS_RESTARTED",
    "STATUS_STALE",
    "STATUS_DISABLED",
    "STATUS_REMAPPED",
    "libcb_version",
)
