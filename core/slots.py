"""``Slots``: the server's handler concurrency limit.

Every incoming message takes a slot, so taking a free one must cost no more than a counter
decrement: ``asyncio.Semaphore.acquire()`` is a coroutine and scans its waiters on every
call. A released slot goes straight to the longest waiter, so none can be overtaken.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """``free`` slots: take one with ``if slots.free: slots.free -= 1``, else with
    ``await slots.wait()``; give it back with ``release()``."""

    __slots__ = ("_waiters", "free")

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Wait for a slot (call only when none is free); it is yours when this returns."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but cancelled before taking it: pass it on
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
