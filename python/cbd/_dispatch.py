"""on_transition hooks: one reader of cbd's history ring per client and process.

cbd appends every transition of every circuit to the segment's history ring;
libcb reads it with ``cb_next_transition`` (no socket, no syscall but a
sleep when idle). One daemon thread per ``Client`` and process polls the ring
with the GIL released (``read_transitions``) and hands each transition to
the hooks registered for its circuit, in history order. There is no thread
per circuit and nothing on the call path: a hook that sleeps delays only the
hooks after it; one that raises is logged and skipped.

Which process fires: the thread starts in a process on the first call of a
decorated function with a hook there (or ``Client.start_transitions()``),
and from then on that process fires the hooks of its circuits for every
transition on the host, whichever process caused it. In a prefork server
that is each worker that serves calls; a master that only imported the app
fires nothing. The reader starts at the newest history entry, so a process
sees the transitions made from its first call on (the call that starts it
included), not older ones. For one action per host per transition use
cbd's ``[hooks]`` commands instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import weakref
from typing import Callable, Dict, List, Optional

from ._types import CircuitTransition

logger = logging.getLogger("cbd")

Hook = Callable[[CircuitTransition], object]

_dispatchers: "weakref.WeakSet[TransitionDispatcher]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent's thread at fork would stay held forever.
    for d in list(_dispatchers):
        d._lock = threading.Lock()
        d._thread = None
        d._pid = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class TransitionDispatcher:
    def __init__(self, client: object, interval: float) -> None:
        self._client = client  # cbd._cbd.Client
        self._interval = interval
        self._hooks: Dict[str, List[Hook]] = {}
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._pid: Optional[int] = None
        self._stop = threading.Event()
        self.overruns = 0
        _dispatchers.add(self)

    def add(self, name: str, hook: Hook) -> None:
        with self._lock:
            self._hooks.setdefault(name, []).append(hook)

    def has_hooks(self) -> bool:
        return bool(self._hooks)

    def ensure_running(self) -> None:
        """Start the reader thread in this process if it does not run here yet."""
        pid = os.getpid()
        if self._pid == pid and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == pid and self._thread is not None and self._thread.is_alive():
                return
            # Start at the newest entry: hooks see what happens from now on
            # in this process, not the history since the client was opened
            # (or since the master's reader last looked, in a forked child).
            while self._client.read_transitions(0.0)[0]:  # type: ignore[attr-defined]
                pass
            self._stop = threading.Event()
            t = threading.Thread(target=self._run, args=(self._stop,), name="cbd-transitions", daemon=True)
            t.start()
            self._thread, self._pid = t, pid

    def stop(self) -> None:
        thread = self._thread
        self._stop.set()
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join()
        self._thread = None

    def _run(self, stop: threading.Event) -> None:
        read = self._client.read_transitions  # type: ignore[attr-defined]
        while not stop.is_set():
            try:
                batch, overruns = read(0.2, self._interval)
            except Exception:  # closed client, damaged segment: say it once, stop
                logger.warning("cbd: reading transitions failed; on_transition hooks stop here", exc_info=True)
                return
            if overruns:
                self.overruns += overruns
                logger.warning(
                    "cbd: on_transition hooks fell behind cbd's history ring; some transitions were skipped"
                )
            for raw in batch:
                hooks = self._hooks.get(raw[1])
                if not hooks:
                    continue
                transition = CircuitTransition._from_tuple(raw)
                for hook in list(hooks):
                    _fire(hook, transition)


def _fire(hook: Hook, transition: CircuitTransition) -> None:
    try:
        result = hook(transition)
        if inspect.isawaitable(result):
            asyncio.run(_wait(result))
    except Exception:
        logger.warning(
            "cbd: on_transition hook for circuit '%s' raised; ignoring.", transition.circuit_name, exc_info=True
        )


async def _wait(awaitable: object) -> None:
    await awaitable  # type: ignore[misc]
