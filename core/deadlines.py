"""Request timeouts without a timer per request (used by ``ClientProxy``)."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Protocol

from .errors import RequestTimeout, short_repr

__all__ = ["Deadlines", "Failable"]


class Failable(Protocol):
    """A request still waiting: failed with ``RequestTimeout`` when its time is up."""

    def fail(self, exc: BaseException) -> None: ...


class Deadlines:
    """Times requests out without a timer per request.

    Requests that share a timeout expire in the order they started, so one
    insertion-ordered dict per timeout value (to the millisecond; keyed by request id, so a
    finished call is forgotten at once) and a single loop timer for the earliest deadline
    are enough.
    """

    __slots__ = ("_at", "_loop", "_queues", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, dict[str, tuple[float, Failable, Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(self, timeout: float, rid: str, pending: Failable, pattern: Any) -> None:
        at = self._loop.time() + timeout
        queue = self._queues.get(timeout)
        if queue is None:
            # computed timeouts (what is left of a budget) share a queue per millisecond;
            # rounding is slow, so a timeout that is already a key skips it
            key = round(timeout, 3)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = {}
        queue[rid] = (at, pending, pattern)
        if at < self._at:
            self._schedule(at)

    def discard(self, timeout: float, rid: str) -> None:
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues.get(round(timeout, 3))
        if queue is not None:
            queue.pop(rid, None)

    def _schedule(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = self._loop.call_at(at, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._at = math.inf
        now = self._loop.time()
        following = math.inf
        for timeout, queue in list(self._queues.items()):
            expired = []
            for rid, (at, pending, pattern) in queue.items():
                if at > now:
                    following = min(following, at)
                    break
                expired.append((rid, pending, pattern))
            for rid, pending, pattern in expired:
                del queue[rid]
                pending.fail(
                    RequestTimeout(f"no reply to {short_repr(pattern)} within {timeout:g}s")
                )
            if not queue:
                del self._queues[timeout]
        if following < math.inf:
            self._schedule(following)
