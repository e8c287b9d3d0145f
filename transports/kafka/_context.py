"""The context of a Kafka record: how a record becomes one, and how it is settled."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from polybus.abc import Context
from polybus.errors import ProtocolError, describe_error
from polybus.packets import (
    DEAD_LETTER_ERROR,
    DEAD_LETTER_ORIGIN,
    MISSING,
    Reply,
    parse_deadline_value,
)

from ._common import (
    CORRELATION_ID,
    DEADLINE,
    DISPOSED_VALUE,
    ERRORS,
    NEST_ERR,
    NEST_IS_DISPOSED,
    REPLY_PARTITION,
    REPLY_TOPIC,
    TYPE_HINT,
    OutRecord,
    log,
    partition_of,
)
from ._outlet import Outlet
from ._partition import Partition

__all__ = ["KafkaContext", "ReplyTo", "read_record"]

_DEAD_LETTER_HEADERS = frozenset((DEAD_LETTER_ERROR, DEAD_LETTER_ORIGIN))


@dataclass(frozen=True)
class ReplyTo:
    """Where a request's reply goes: NestJS's reply topic and partition headers, and the
    correlation id the reply carries back (as received)."""

    topic: str
    partition: int | None
    correlation_id: bytes


class KafkaContext(Context):
    """Context of a Kafka record.

    ``topic``, ``partition``, ``offset``: where the record is; ``key``: its key decoded like
    a value (None when absent); ``headers``: every header, decoded with NestJS's rule (text,
    JSON for values starting with ``{``/``[``, bytes for values starting with ``0x00``);
    ``record``: aiokafka's ``ConsumerRecord`` itself.
    """

    __slots__ = (
        "_done",
        "_headers",
        "_outlet",
        "_part",
        "_reply_to",
        "_sends",
        "_settled",
        "key",
        "offset",
        "partition",
        "record",
        "topic",
    )
    transport_name = "kafka"
    _headers: dict[str, Any] | None

    def __init__(
        self,
        outlet: Outlet,
        part: Partition,
        record: Any,
        data: Any,
        id: Any,
        deadline: float | None,
        key: Any,
        reply_to: ReplyTo | None,
    ) -> None:
        super().__init__(record.topic, data, id, None, deadline)
        self._outlet = outlet
        self._part = part
        self._settled = False
        self._sends: list[asyncio.Future[Any]] | None = None
        self._done: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if part.ordered else None
        )
        self._reply_to = reply_to
        self.record = record
        self.topic: str = record.topic
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.key = key

    @property
    def reply_topic(self) -> str | None:
        return None if self._reply_to is None else self._reply_to.topic

    @property
    def reply_partition(self) -> int | None:
        return None if self._reply_to is None else self._reply_to.partition

    @property
    def headers(self) -> dict[str, Any]:
        """Every header of the record, decoded on first access."""
        headers = self._headers
        if headers is None:
            parse = self._outlet.codec.parse
            headers = {str(name): parse(raw) for name, raw in self.record.headers}
            self._headers = headers
        return headers

    @headers.setter
    def headers(self, value: dict[str, Any] | None) -> None:
        self._headers = value

    async def send_reply(self, reply: Reply) -> None:
        reply_to = self._reply_to
        if reply_to is None:
            return
        codec = self._outlet.codec
        out = codec.message(reply.response, None)
        out.headers.append((CORRELATION_ID, reply_to.correlation_id))
        if reply.err:
            out.headers.append((NEST_ERR, codec.err_header(reply.err)))
        if reply.disposed:
            out.headers.append((NEST_IS_DISPOSED, DISPOSED_VALUE))
        if reply_to.partition is not None:
            out.partition = reply_to.partition
        future = await self._outlet.send(reply_to.topic, out, what="reply")
        # Delivery is awaited by settle(): the offset is committed once the replies are out.
        if self._sends is None:
            self._sends = [future]
        else:
            self._sends.append(future)

    async def dead_letter(self, destination: str, error: BaseException) -> None:
        """Produce this record as it arrived (key, value, headers) to the ``destination``
        topic, created if missing, with the headers ``x-polybus-error`` and
        ``x-polybus-origin`` (``topic[partition]@offset``); returns once the broker has it.
        Settling stays with :meth:`settle`."""
        record = self.record
        headers = [(n, v) for n, v in record.headers if n not in _DEAD_LETTER_HEADERS]
        headers.append((DEAD_LETTER_ERROR, describe_error(error).encode()))
        headers.append(
            (DEAD_LETTER_ORIGIN, f"{self.topic}[{self.partition}]@{self.offset}".encode())
        )
        out = OutRecord(record.key, record.value, headers)
        await self._outlet.ensure_topic(destination)
        future = await self._outlet.send(destination, out, what="dead-letter")
        with ERRORS(f"kafka: cannot dead-letter to {destination!r}"):
            await future

    async def settled(self) -> None:
        """Return once :meth:`settle` was called (an ordered partition waits for it)."""
        if self._done is not None:
            await self._done

    async def settle(self, ok: bool) -> None:
        """The record's handling is over: once its replies are delivered, its offset counts
        as finished (and is committed with the next batch); an ordered partition goes on.

        ``ok`` false (rejected: core logged it, or dead-lettered it first) commits too: a
        Kafka partition cannot skip one record and redeliver it later. A second call is a
        no-op, so each record is settled exactly once."""
        if self._settled:
            return
        self._settled = True
        waiting = [f for f in self._sends or () if not f.done()]
        if waiting:
            remaining = len(waiting)

            def delivered(_: asyncio.Future[Any]) -> None:
                nonlocal remaining
                remaining -= 1
                if remaining == 0:
                    self._delivered()

            for future in waiting:
                future.add_done_callback(delivered)
        else:
            self._delivered()
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _delivered(self) -> None:
        for future in self._sends or ():
            exc = None if future.cancelled() else future.exception()
            if exc is not None or future.cancelled():
                log.warning(
                    "kafka: reply to %s (request %s) was not delivered: %r",
                    self.reply_topic,
                    self.id,
                    exc or "cancelled",
                )
        self._sends = None
        self._outlet.commits.finished(self._part, self.offset)


def read_record(outlet: Outlet, part: Partition, record: Any, event: bool) -> KafkaContext | None:
    """The context of ``record`` (of an event topic when ``event``: never replied to);
    ``None`` (logged) when it cannot be decoded."""
    codec = outlet.codec
    headers: dict[str, bytes | None] = dict(record.headers)  # a repeated header: the last
    rid = headers.get(CORRELATION_ID)
    reply_topic = headers.get(REPLY_TOPIC)
    raw_deadline = headers.get(DEADLINE)
    deadline = parse_deadline_value(raw_deadline) if raw_deadline else None
    try:
        data = codec.decode_data(record.value, headers.get(TYPE_HINT))
        key = codec.parse(record.key) if record.key else None
    except ProtocolError as exc:
        log.warning(
            "kafka: dropping undecodable record %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            exc,
        )
        return None
    reply_to = None
    request_id: Any = MISSING
    if rid and reply_topic and not event:
        request_id = rid.decode("utf-8", "replace")
        reply_partition = partition_of(headers.get(REPLY_PARTITION))
        reply_to = ReplyTo(reply_topic.decode("utf-8", "replace"), reply_partition, rid)
    return KafkaContext(outlet, part, record, data, request_id, deadline, key, reply_to)
