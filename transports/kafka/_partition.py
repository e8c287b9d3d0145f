"""An assigned partition's offsets, and the commits of what finished on it.

Records are handed to the microservice in offset order; their handling may end in any order.
What is committed is the offset after the last record whose handling, and every earlier
record's, is over: a crash or a rebalance delivers again what did not finish, never skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._common import log

__all__ = ["COMMIT_TIMEOUT", "Committer", "Partition"]

COMMIT_TIMEOUT = 5.0
"""Seconds any commit (or other group request) may take: aiokafka retries some errors
forever (a topic deleted under it), which would stall the group."""


class Partition:
    """One assigned partition: its queue of fetched records and its commit watermark."""

    __slots__ = (
        "active",
        "commit_at",
        "committed",
        "drained",
        "finished",
        "newest_timestamp",
        "next_offset",
        "ordered",
        "paused",
        "pending",
        "queue",
        "tp",
        "wake",
        "worker",
    )

    def __init__(self, tp: Any, ordered: bool, position: int = -1) -> None:
        self.tp = tp
        self.ordered = ordered
        self.queue: deque[Any] = deque()
        self.pending: deque[int] = deque()
        """Offsets handed to the microservice whose handling is not over, in order."""
        self.finished: set[int] = set()
        """Offsets whose handling is over while an earlier one's is not."""
        self.newest_timestamp = -1
        """The newest timestamp (ms) of a record handed to the microservice, -1 before one."""
        self.next_offset = position
        self.commit_at = position
        self.committed = position
        self.active = True
        self.paused = False
        self.wake: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.worker: asyncio.Task[None] | None = None

    def start(self, position: int) -> int:
        """The position is known (-1: unknown, the first finished record sets it); returns
        where the partition starts.

        Records fetched while the position was asked for start it: by the time aiokafka's
        ``position()`` answers, handing them over may have moved it past them, and taking
        that later offset would skip them and commit past them."""
        queue = self.queue
        if queue and (position < 0 or queue[0].offset < position):
            position = queue[0].offset
        self.commit_at = self.committed = position
        self.next_offset = max(self.next_offset, position)
        return position

    def finish(self, offset: int) -> bool:
        """Handling of ``offset`` is over; True when the commit watermark moved."""
        pending = self.pending
        if not pending or pending[0] != offset:
            self.finished.add(offset)
            return False
        pending.popleft()
        commit_at = offset + 1
        finished = self.finished
        while pending and pending[0] in finished:
            head = pending.popleft()
            finished.discard(head)
            commit_at = head + 1
        self.commit_at = commit_at
        if not pending and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        return True

    def notify(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class Committer:
    """Commits the watermarks of partitions: every record finished within
    ``commit_interval`` goes out in one commit request."""

    __slots__ = ("_consumer", "_dirty", "_group", "_interval", "_task")

    def __init__(self, group_id: str, interval: float, consumer: Callable[[], Any]) -> None:
        self._group = group_id
        self._interval = interval
        self._consumer = consumer
        """The group's consumer now; ``None`` once the server let it go (commits then stop)."""
        self._dirty: set[Partition] = set()
        self._task: asyncio.Task[None] | None = None

    def finished(self, part: Partition, offset: int) -> None:
        """Handling of ``offset`` is over: its partition's watermark goes in the next commit."""
        if part.finish(offset) and part.active:
            self._dirty.add(part)
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._commit_loop())

    async def _commit_loop(self) -> None:
        try:
            while self._dirty:
                await asyncio.sleep(self._interval)
                parts = [p for p in self._dirty if p.active and p.commit_at > p.committed]
                self._dirty.clear()
                consumer = self._consumer()
                if consumer is None:
                    return
                await self.commit(parts, consumer)
        finally:
            self._task = None

    async def commit(self, parts: Sequence[Partition], consumer: Any) -> None:
        """Commit the watermarks of ``parts`` that moved since their last commit."""
        offsets = {p.tp: p.commit_at for p in parts if p.commit_at > p.committed}
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT)
        except (Exception, asyncio.TimeoutError) as exc:
            log.warning("kafka: group %s: commit of %s failed: %r", self._group, offsets, exc)
            return
        for part in parts:
            if part.tp in offsets:
                part.committed = max(part.committed, offsets[part.tp])

    async def close(self, parts: Sequence[Partition], consumer: Any) -> None:
        """Let the running commit end, then commit what finished on ``parts`` since."""
        task = self._task
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
        await self.commit(parts, consumer)
