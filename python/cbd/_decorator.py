"""circuit_breaker: Powertools' decorator over cbd's host-wide circuits.

Sync functions and methods are wrapped by ``_cbd.Breaker``, whose call path
is C (see _cbd.c); ``async def`` functions by a coroutine function here that
does the same steps around ``await``: allow before the coroutine runs the
function, record when it finishes.

Binding: the circuit is looked up (registered if new) when the function is
decorated, with the decorator's ``client`` or the process's default one. In a
prefork server that imports the app in the master (gunicorn --preload) the
handle is inherited by the workers; otherwise each worker binds when it
imports. If cbd cannot be reached then, the function runs unprotected and a
bind is retried at most once a second, as Powertools fails open when its
store cannot be read.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
import warnings
from typing import Any, Callable, Optional, TypeVar

from . import _cbd
from ._client import Client, default_client
from ._types import CircuitBreakerConfig, CircuitInfo
from .errors import CircuitBreakerOpenError, CircuitBreakerPersistenceError

logger = logging.getLogger("cbd")

F = TypeVar("F", bound=Callable[..., Any])

_fork_generation = 1


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_forked)


class _Binding:
    """What a decorated function needs to find its circuit, now or later."""

    def __init__(self, name: str, config: CircuitBreakerConfig, client: Optional[Client], on_transition: Any) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.on_transition = on_transition
        self.bound_client: Optional[Client] = None
        self.circuit: Any = None  # _cbd.Circuit
        self.next_try = 0.0
        self.lock = threading.Lock()
        self.warned = False

    def bind(self) -> Any:
        """The circuit, or None while cbd cannot be reached. Config errors raise."""
        client = self.client if self.client is not None else default_client()
        if client is None:
            return None
        try:
            circuit = client._circuit(self.name, self.config)._c
        except CircuitBreakerPersistenceError as e:
            if not self.warned:
                self.warned = True
                logger.warning("cbd: circuit '%s': %s; calls go ahead unprotected until cbd answers", self.name, e)
            return None
        with self.lock:
            if self.on_transition is not None and self.bound_client is not client:
                client.on_transition(self.name, self.on_transition)
            self.bound_client = client
            self.circuit = circuit
        return circuit

    def start_hooks(self) -> None:
        client = self.bound_client
        if client is not None:
            client._dispatcher.ensure_running()


def _open_error(info: CircuitInfo) -> CircuitBreakerOpenError:
    return CircuitBreakerOpenError(f"Circuit '{info.name}' is open.", circuit=info)


def circuit_breaker(
    name: str,
    persistence_store: Any = None,
    on_circuit_open: Optional[Callable[..., Any]] = None,
    on_transition: Optional[Callable[..., Any]] = None,
    config: Optional[CircuitBreakerConfig] = None,
    *,
    client: Optional[Client] = None,
) -> Callable[[F], F]:
    """Protect a function that calls one downstream with cbd's circuit ``name``.

    As Powertools' decorator: a counted failure (see CircuitBreakerConfig)
    re-raises the original error; a rejected call never runs the function and
    returns ``on_circuit_open(*args, **kwargs, circuit=CircuitInfo)`` or
    raises ``CircuitBreakerOpenError``. ``on_transition(CircuitTransition)``
    runs for every transition of the circuit (see cbd._dispatch for where).

    Differences, on purpose: the circuit is one per host (every process and
    thread counts into it); cbd's ``store`` option decides persistence, so
    ``persistence_store`` is accepted and ignored (with a warning);
    ``client`` picks a cbd instance other than ``$CB_INSTANCE``'s.
    """
    if not isinstance(name, str):
        raise TypeError(f"circuit_breaker: name must be a str, got {name!r}")
    if config is None:
        config = CircuitBreakerConfig()
    elif not isinstance(config, CircuitBreakerConfig):
        raise TypeError(f"circuit_breaker: config must be a CircuitBreakerConfig, got {config!r}")
    if persistence_store is not None:
        warnings.warn(
            f"circuit_breaker('{name}'): persistence_store is ignored: cbd's store option decides where circuits "
            "persist (dynamodb://TABLE shares them with Powertools functions using that table)",
            stacklevel=2,
        )

    def decorator(func: F) -> F:
        binding = _Binding(name, config, client, on_transition)
        binding.bind()
        if inspect.iscoroutinefunction(func):
            return _async_wrapper(func, binding, on_circuit_open)  # type: ignore[return-value]
        breaker = _cbd.Breaker(
            func,
            binding.circuit,
            on_circuit_open,
            config.handled_exceptions,
            config.ignored_exceptions,
            binding.start_hooks if on_transition is not None else None,
            binding.bind,
        )
        functools.update_wrapper(breaker, func)
        return breaker  # type: ignore[no-any-return]

    return decorator


def _async_wrapper(func: Callable[..., Any], binding: _Binding, on_circuit_open: Optional[Callable[..., Any]]) -> Any:
    config = binding.config
    started = [0]

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        c = binding.circuit
        if c is None or c.client.closed:
            now = time.monotonic()
            if now >= binding.next_try:
                binding.next_try = now + 1.0
                c = binding.bind()
            if c is None or c.client.closed:
                return await func(*args, **kwargs)
        if binding.on_transition is not None and started[0] != _fork_generation:
            started[0] = _fork_generation
            binding.start_hooks()
        ticket = c.allow()
        if not ticket & 0xFF:
            info = CircuitInfo._from_tuple(c.info())
            if on_circuit_open is None:
                raise _open_error(info)
            result = on_circuit_open(*args, **kwargs, circuit=info)
            if inspect.isawaitable(result):
                result = await result
            return result
        try:
            result = await func(*args, **kwargs)
        except BaseException as e:
            c.record(ticket, int(config.outcome(e)))
            raise
        c.record(ticket, _cbd.SUCCESS)
        return result

    return wrapper


