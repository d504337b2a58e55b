"""Types of the _cbd extension (cbd/_cbd.c); use the cbd package, not this."""

from typing import Any, Callable, List, Mapping, Optional, Tuple

POLICY_FIELDS: Tuple[Tuple[str, int, int, int, str], ...]
CLOSED: int
OPEN: int
HALF_OPEN: int
SUCCESS: int
FAILURE: int
IGNORED: int
TICKET_REJECTED: int
TICKET_ALLOWED: int
TICKET_PROBE: int
TICKET_BYPASS: int
STATUS_RUNNING: int
STATUS_RESTARTED: int
STATUS_STALE: int
STATUS_DISABLED: int
STATUS_REMAPPED: int
SOURCE_LOCAL: int
SOURCE_REMOTE: int
SOURCE_OPERATOR: int
SOURCE_TIMER: int
SOURCE_RESTORE: int

class Client:
    instance: Optional[str]
    closed: bool
    def __init__(self, instance: Optional[str] = ...) -> None: ...
    def close(self) -> None: ...
    def circuit(self, name: str, config: Optional[Mapping[str, int]] = ...) -> Circuit: ...
    def read_transitions(self, timeout: float = ..., interval: float = ...) -> Tuple[List[Tuple[Any, ...]], int]: ...
    def status(self) -> int: ...

class Circuit:
    name: str
    client: Client
    def allow(self) -> int: ...
    def record(self, ticket: int, outcome: int) -> None: ...
    def info(self) -> Tuple[Any, ...]: ...

class Breaker:
    _circuit: Optional[Circuit]
    _func: Callable[..., Any]
    def __init__(
        self,
        func: Callable[..., Any],
        circuit: Optional[Circuit] = ...,
        on_open: Optional[Callable[..., Any]] = ...,
        handled: Optional[Tuple[type, ...]] = ...,
        ignored: Optional[Tuple[type, ...]] = ...,
        hook_starter: Optional[Callable[[], Any]] = ...,
        binder: Optional[Callable[[], Optional[Circuit]]] = ...,
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, obj: Any, objtype: Any = ...) -> Any: ...

def _register(info_factory: Any, open_error: Any, persistence_error: Any, config_error: Any) -> None: ...
def strerror(code: int) -> Tuple[str, str]: ...
def libcb_version() -> str: ...
