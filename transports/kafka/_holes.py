"""Records a broker left out of a fetch, read again.

tansu 0.6 (the Kafka-compatible broker CI runs on) sometimes answers a fetch without a batch
that another producer was writing to the same partition at that moment: the fetch returns
offsets 4342 and 4344 but not 4343, and a fetch from 4343 a moment later does return it.
aiokafka takes the jump (offsets may legally skip, in compacted topics or around transaction
markers), so the record would never be read: a request never answered, an event lost, a
reply never seen. Both halves therefore take a partition's records only up to the first
missing offset and read the partition again from there; a hole still there after
:data:`PATIENCE` seconds is taken as a real one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ._common import log

__all__ = ["PATIENCE", "Holes"]

PATIENCE = 0.5
"""Seconds a missing offset is fetched again before the records after it are taken."""


class Holes:
    """Finds missing offsets in fetched records and has ``consumer`` fetch them again."""

    __slots__ = ("_consumer", "_waiting")

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._waiting: dict[Any, tuple[int, float]] = {}
        """Partition → the offset it is read again from, and since when."""

    def cut(self, tp: Any, records: Sequence[Any], expected: int | None) -> Sequence[Any]:
        """``records`` of ``tp`` (fetched from ``expected``, None if unknown) up to the
        first missing offset; all of them when none is missing or the hole is old enough.

        Records below ``expected`` (fetched again after a seek back) do not count."""
        want = expected
        for index, record in enumerate(records):
            offset = record.offset
            if want is None or offset == want:
                want = offset + 1
            elif offset > want:
                return self._missing(tp, records, index, want)
        if self._waiting:
            self._waiting.pop(tp, None)
        return records

    def _missing(self, tp: Any, records: Sequence[Any], index: int, offset: int) -> Sequence[Any]:
        now = time.monotonic()
        waiting = self._waiting.get(tp)
        if waiting is None or waiting[0] != offset:
            self._waiting[tp] = (offset, now)
            log.debug(
                "kafka: %s[%d] came without offset %d: reading it again",
                tp.topic,
                tp.partition,
                offset,
            )
        elif now - waiting[1] > PATIENCE:
            del self._waiting[tp]
            log.warning(
                "kafka: offset %d of %s[%d] is still missing after %.1fs: reading on past it",
                offset,
                tp.topic,
                tp.partition,
                PATIENCE,
            )
            return records
        self._consumer.seek(tp, offset)
        return records[:index]
