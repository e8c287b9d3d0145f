"""The client's reply partitions: assigned by hand on a consumer without a group.

A client reads its replies from partitions it assigns itself (no consumer group, so no
rebalance; see ``_client``). Adding one must not move the others, one whose broker lost
its data must be read again from its new end, and a record a fetch left out is fetched
again (see ``_holes``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]

from ._admin import TopicAdmin
from ._common import ERRORS, log
from ._holes import Holes

__all__ = ["ReplyPartitions"]

_POSITIONS_TIMEOUT = 5.0
_RESYNC_TIMEOUT = 5.0


class ReplyPartitions:
    """The reply partitions assigned to ``consumer``; changes to them take turns."""

    def __init__(self, consumer: Any, admin: TopicAdmin) -> None:
        self._consumer = consumer
        self._admin = admin
        self._lock = asyncio.Lock()
        self._holes = Holes(consumer)
        self._next: dict[Any, int] = {}
        """Partition → the offset its next record should have."""

    def taken(self, tp: Any, records: Sequence[Any]) -> Sequence[Any]:
        """The fetched ``records`` of ``tp`` to read now (up to an offset left out)."""
        records = self._holes.cut(tp, records, self._next.get(tp))
        if records:
            self._next[tp] = records[-1].offset + 1
        return records

    async def add(self, topic: str, partition: int) -> None:
        """Add ``topic[partition]`` at its end, keeping the others' positions."""
        consumer = self._consumer
        tp = TopicPartition(topic, partition)
        async with self._lock:
            with ERRORS("kafka: cannot assign reply partition %s[%d]", topic, partition):
                current = set(consumer.assignment())
                others = [old for old in current if old != tp]
                # First wait until every position is known; the second pass then reads them
                # all without yielding, so the reader cannot move one in between.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(consumer.position(old) for old in others)),
                        _POSITIONS_TIMEOUT,
                    )
                # a position still unknown falls back to the end (auto_offset_reset)
                known = [old for old in others if _known(consumer, old)]
                positions = {old: await consumer.position(old) for old in known}
                if tp not in current:
                    consumer.assign([*current, tp])
                    for old, offset in positions.items():
                        consumer.seek(old, offset)
                await consumer.seek_to_end(tp)
                self._next[tp] = await consumer.position(tp)

    async def resync(self, partitions: Sequence[Any], topics: Sequence[str]) -> bool:
        """Read again from the end each of ``partitions`` whose end went below our position;
        True if one was moved (its topic was created again, with ``topics``).

        A broker that came back without its data (in-memory storage) or a truncated log
        restarts the partition at a lower offset. Apache Kafka answers a fetch past the end
        with OFFSET_OUT_OF_RANGE and aiokafka resets the position itself, but compatible
        brokers (tansu) just leave the fetch waiting, and the replies written from the new
        end on would never be read. The fetches' high watermark shows it without a request;
        the end offset (ListOffsets) confirms it. The topics went with the data, so they
        are created again before the seek (as always, without relying on auto-creation).
        """
        consumer = self._consumer
        behind = []
        for tp in partitions:
            position = _position(consumer, tp)
            with contextlib.suppress(Exception):
                high = consumer.highwater(tp)
                if position is not None and high is not None and high < position:
                    behind.append(tp)
        if not behind:
            return False
        async with self._lock:
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(behind), _RESYNC_TIMEOUT)
            except (Exception, asyncio.TimeoutError) as exc:
                log.warning("kafka: repositioning reply partitions %s failed: %r", behind, exc)
                return False
            moved = {}
            for tp in behind:
                end, position = ends.get(tp), _position(consumer, tp)
                if end is not None and position is not None and end < position:
                    moved[tp] = end
            if not moved:
                return False  # a high watermark older than a seek to the end
            try:
                await asyncio.wait_for(self._admin.ensure(list(topics)), _RESYNC_TIMEOUT)
            except (Exception, asyncio.TimeoutError) as exc:
                log.warning("kafka: re-creating topics %s failed: %r", topics, exc)
            for tp, end in moved.items():
                log.warning(
                    "kafka: reply partition %s[%d] ends at %d, below the position read "
                    "(the broker lost its data?): reading it from there",
                    tp.topic,
                    tp.partition,
                    end,
                )
                consumer.seek(tp, end)
                self._next[tp] = end
        return True


def _known(consumer: Any, tp: Any) -> bool:
    """Whether ``tp``'s position is known (``position()`` then returns without waiting)."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return bool(state is not None and state.has_valid_position)
    except AttributeError:
        return True


def _position(consumer: Any, tp: Any) -> int | None:
    """``tp``'s position if it is known (None while it is being reset)."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except (AttributeError, AssertionError):
        return None
