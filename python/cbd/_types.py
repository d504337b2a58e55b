"""Powertools' state and configuration types, backed by cbd's policy table.

``CircuitState``, ``CircuitInfo`` and ``CircuitTransition`` have Powertools'
fields first, in Powertools' order, so positional and keyword use both carry
over; cbd's further facts (epoch, forced, source, totals ...) follow as
keyword-only extras with defaults.

``CircuitBreakerConfig`` takes Powertools' arguments and, by keyword, every
field of libcb's ``CB_POLICY_FIELDS`` table (``POLICY_FIELDS`` here, read
from the extension): a field added to the C table is accepted, validated
against its bounds and sent to cbd without a change here. ``recovery_timeout``
is Powertools' name in seconds for ``recovery_timeout_ms``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple, Type, Union

from . import _cbd
from .errors import CircuitBreakerConfigError


class PolicyField(NamedTuple):
    name: str
    default: int
    min: int
    max: int
    help: str


#: Every policy field cbd knows, from libcb's CB_POLICY_FIELDS, by name.
POLICY_FIELDS: Dict[str, PolicyField] = {f[0]: PolicyField(*f) for f in _cbd.POLICY_FIELDS}


class CircuitState(str, enum.Enum):
    """A circuit's state; equal to its string form, as in Powertools."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"

    def __str__(self) -> str:
        return self.value


_STATES = {_cbd.CLOSED: CircuitState.CLOSED, _cbd.OPEN: CircuitState.OPEN, _cbd.HALF_OPEN: CircuitState.HALF_OPEN}
_SOURCES = {
    _cbd.SOURCE_LOCAL: "local",
    _cbd.SOURCE_REMOTE: "remote",
    _cbd.SOURCE_OPERATOR: "operator",
    _cbd.SOURCE_TIMER: "timer",
    _cbd.SOURCE_RESTORE: "restore",
}


def _state(value: int) -> CircuitState:
    return _STATES.get(value, CircuitState.CLOSED)


class Outcome(enum.IntEnum):
    """What a call's result counts as (libcb's cb_outcome)."""

    SUCCESS = _cbd.SUCCESS
    FAILURE = _cbd.FAILURE
    IGNORED = _cbd.IGNORED


@dataclass(frozen=True)
class CircuitInfo:
    """A snapshot of a circuit (Powertools' fields, then cbd's).

    ``failure_count``: CLOSED, the host's current streak; OPEN/HALF_OPEN, the
    failures counted when it tripped. ``opened_at``: epoch seconds of the last
    opening, None while CLOSED.
    """

    name: str
    state: CircuitState
    failure_count: int
    opened_at: Optional[int] = None
    epoch: int = field(default=0, compare=False)
    forced: bool = field(default=False, compare=False)
    disabled: bool = field(default=False, compare=False)
    config: Mapping[str, int] = field(default_factory=dict, compare=False)
    total_successes: int = field(default=0, compare=False)
    total_failures: int = field(default=0, compare=False)
    total_ignored: int = field(default=0, compare=False)
    open_until: Optional[float] = field(default=None, compare=False)

    @classmethod
    def _from_tuple(cls, t: Tuple[Any, ...]) -> "CircuitInfo":
        (name, state, forced, disabled, failures, opened_at, epoch, config, succ, fail, ign, until_ns) = t
        st = _state(state)
        return cls(
            name=name,
            state=st,
            failure_count=failures,
            opened_at=opened_at if opened_at or st is not CircuitState.CLOSED else None,
            epoch=epoch,
            forced=forced,
            disabled=disabled,
            config=config,
            total_successes=succ,
            total_failures=fail,
            total_ignored=ign,
            open_until=until_ns / 1e9 if until_ns else None,
        )


@dataclass(frozen=True)
class CircuitTransition:
    """One transition of a circuit, from cbd's history (Powertools' fields, then cbd's).

    ``source`` says who made it: ``local`` (this host's outcomes), ``remote``
    (another host through the store), ``operator`` (cbctl), ``timer``
    (recovery timeout, probe lease), ``restore`` (daemon start). ``time`` is
    when cbd made it (epoch seconds, float).
    """

    circuit_name: str
    from_state: CircuitState
    to_state: CircuitState
    opened_at: Optional[int] = None
    source: str = field(default="local", compare=False)
    epoch: int = field(default=0, compare=False)
    failure_count: int = field(default=0, compare=False)
    time: float = field(default=0.0, compare=False)
    seq: int = field(default=0, compare=False)

    @classmethod
    def _from_tuple(cls, t: Tuple[Any, ...]) -> "CircuitTransition":
        seq, name, frm, to, source, epoch, failures, opened_at, time_ns = t
        return cls(
            circuit_name=name,
            from_state=_state(frm),
            to_state=_state(to),
            opened_at=opened_at or None,
            source=_SOURCES.get(source, str(source)),
            epoch=epoch,
            failure_count=failures,
            time=time_ns / 1e9,
            seq=seq,
        )


class Ticket(int):
    """cb_allow()'s answer: true when the call may go ahead."""

    __slots__ = ()

    @property
    def kind(self) -> int:
        return self & 0xFF

    @property
    def permitted(self) -> bool:
        return self & 0xFF != _cbd.TICKET_REJECTED

    @property
    def probe(self) -> bool:
        return self & 0xFF == _cbd.TICKET_PROBE

    @property
    def bypass(self) -> bool:
        return self & 0xFF == _cbd.TICKET_BYPASS

    @property
    def epoch(self) -> int:
        return int(self) >> 32

    def __bool__(self) -> bool:
        return self.permitted

    def __repr__(self) -> str:
        kinds = {0: "REJECTED", 1: "ALLOWED", 2: "PROBE", 3: "BYPASS"}
        return f"Ticket({kinds.get(self.kind, self.kind)}, epoch={self.epoch})"


ExceptionTypes = Union[Type[BaseException], Iterable[Type[BaseException]], None]


def _exceptions(value: ExceptionTypes, what: str) -> Optional[Tuple[Type[BaseException], ...]]:
    if value is None:
        return None
    bad = f"{what} must be an exception type or an iterable of exception types, got {value!r}."
    if isinstance(value, str):
        raise CircuitBreakerConfigError(bad)
    if isinstance(value, type):
        types: Tuple[Any, ...] = (value,)
    else:
        try:
            types = tuple(value)
        except TypeError:
            raise CircuitBreakerConfigError(bad) from None
    if not types:
        raise CircuitBreakerConfigError(f"{what} must contain at least one exception type.")
    for t in types:
        if not (isinstance(t, type) and issubclass(t, Exception)):
            raise CircuitBreakerConfigError(f"{what} must contain only exception types, got {t!r}.")
    return types


def _policy_int(name: str, value: Any) -> int:
    f = POLICY_FIELDS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not f.min <= value <= f.max:
        raise CircuitBreakerConfigError(
            f"{name} must be an integer in {f.min}..{f.max} ({f.help}), got {value!r}."
        )
    return value


class _Default(int):
    """A default argument value: behaves as the int, but was not given."""

    __slots__ = ()


class _DefaultSeconds(float):
    __slots__ = ()

    def __repr__(self) -> str:
        return f"{self:g}"


class CircuitBreakerConfig:
    """Powertools' tunables, plus cbd's policy fields by keyword.

    ``failure_threshold`` (5), ``recovery_timeout`` (30 s; int or float
    seconds), ``success_threshold`` (3), ``handled_exceptions`` (allow list)
    XOR ``ignored_exceptions`` (deny list), ``local_cache_max_age`` (accepted
    and validated for compatibility; cbd's state is read from shared memory on
    every call, so there is no cache to age). Any other keyword must be a cbd
    policy field (``POLICY_FIELDS``: half_open_max_probes, probe_lease_ms, ...).

    Fields you do not give are not sent: a circuit whose config names none
    takes the daemon's defaults (cbd.conf ``[defaults]``, Powertools' values
    unless an operator changed them). An existing circuit keeps the policy it
    has: cbd's configuration file and operators decide, not the first caller.
    """

    def __init__(
        self,
        failure_threshold: int = _Default(5),
        recovery_timeout: Union[int, float] = _DefaultSeconds(30),
        success_threshold: int = _Default(3),
        handled_exceptions: ExceptionTypes = None,
        ignored_exceptions: ExceptionTypes = None,
        local_cache_max_age: int = 5,
        **policy: int,
    ) -> None:
        given = dict(policy)
        self.handled_exceptions = _exceptions(handled_exceptions, "handled_exceptions")
        self.ignored_exceptions = _exceptions(ignored_exceptions, "ignored_exceptions")
        if self.handled_exceptions and self.ignored_exceptions:
            raise CircuitBreakerConfigError(
                "handled_exceptions and ignored_exceptions are mutually exclusive; pass only one."
            )
        if isinstance(local_cache_max_age, bool) or not isinstance(local_cache_max_age, int) or local_cache_max_age < 0:
            raise CircuitBreakerConfigError(
                f"local_cache_max_age must be a non-negative integer, got {local_cache_max_age!r}."
            )
        self.local_cache_max_age = local_cache_max_age
        for name in given:
            if name not in POLICY_FIELDS:
                known = ", ".join(["recovery_timeout", *POLICY_FIELDS])
                raise CircuitBreakerConfigError(f"unknown circuit breaker option {name!r}; cbd knows: {known}.")
        values: Dict[str, int] = {}
        self._explicit: Dict[str, int] = {}
        if "recovery_timeout_ms" in given and not isinstance(recovery_timeout, _DefaultSeconds):
            raise CircuitBreakerConfigError("recovery_timeout and recovery_timeout_ms name one option; pass only one.")
        for name, value in given.items():
            values[name] = self._explicit[name] = _policy_int(name, value)
        for name, value in (("failure_threshold", failure_threshold), ("success_threshold", success_threshold)):
            values[name] = _policy_int(name, int(value) if isinstance(value, _Default) else value)
            if not isinstance(value, _Default):
                self._explicit[name] = value
        if "recovery_timeout_ms" not in given:
            if isinstance(recovery_timeout, bool) or not isinstance(recovery_timeout, (int, float)) or not recovery_timeout > 0:  # noqa: E501
                raise CircuitBreakerConfigError(f"recovery_timeout must be a positive number of seconds, got {recovery_timeout!r}.")
            ms = round(recovery_timeout * 1000)
            f = POLICY_FIELDS["recovery_timeout_ms"]
            if not f.min <= ms <= f.max:
                raise CircuitBreakerConfigError(
                    f"recovery_timeout must be in {f.min / 1000:g}..{f.max / 1000:g} seconds, got {recovery_timeout!r}."
                )
            values["recovery_timeout_ms"] = ms
            if not isinstance(recovery_timeout, _DefaultSeconds):
                self._explicit["recovery_timeout_ms"] = ms
        for name, f in POLICY_FIELDS.items():
            values.setdefault(name, f.default)
        self._values = values

    def __getattr__(self, name: str) -> int:
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    @property
    def failure_threshold(self) -> int:
        return self._values["failure_threshold"]

    @property
    def success_threshold(self) -> int:
        return self._values["success_threshold"]

    @property
    def recovery_timeout(self) -> float:
        ms = self._values["recovery_timeout_ms"]
        return ms // 1000 if ms % 1000 == 0 else ms / 1000

    def policy(self) -> Optional[Dict[str, int]]:
        """The policy fields to register a circuit with, or None for the daemon's defaults."""
        return dict(self._values) if self._explicit else None

    def counts_as_failure(self, exception: BaseException) -> bool:
        """Powertools' rule: does this exception count as a failure of the downstream?"""
        if not isinstance(exception, Exception):
            return False
        if self.handled_exceptions is not None:
            return isinstance(exception, self.handled_exceptions)
        if self.ignored_exceptions is not None:
            return not isinstance(exception, self.ignored_exceptions)
        return True

    def outcome(self, exception: Optional[BaseException]) -> Outcome:
        """SUCCESS for no exception, else FAILURE or IGNORED by counts_as_failure."""
        if exception is None:
            return Outcome.SUCCESS
        return Outcome.FAILURE if self.counts_as_failure(exception) else Outcome.IGNORED

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self._values.items())
        return f"CircuitBreakerConfig({fields}, handled_exceptions={self.handled_exceptions}, ignored_exceptions={self.ignored_exceptions})"
