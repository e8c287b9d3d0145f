"""The context of a Kafka record: how a record becomes one, and how it is settled."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from polybus.abc import Context
from polybus.errors import ProtocolError
from polybus.packets import MISSING, Reply, parse_deadline_value

from ._common import (
    CORRELATION_ID,
    DEADLINE,
    REPLY_PARTITION,
    REPLY_TOPIC,
    TYPE_HINT,
    log,
    partition_of,
)
from ._partition import Partition

if TYPE_CHECKING:
    from ._server import KafkaServerTransport

__all__ = ["KafkaContext", "read_record"]


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
        "_part",
        "_reply_id",
        "_sends",
        "_server",
        "_settled",
        "key",
        "offset",
        "partition",
        "record",
        "reply_partition",
        "reply_topic",
        "topic",
    )
    transport_name = "kafka"
    _headers: dict[str, Any] | None

    def __init__(
        self,
        server: KafkaServerTransport,
        part: Partition,
        record: Any,
        data: Any,
        id: Any,
        deadline: float | None,
        key: Any,
        reply_to: tuple[str, int | None, bytes] | None,
    ) -> None:
        super().__init__(record.topic, data, id, None, deadline)
        self._server = server
        self._part = part
        self._settled = False
        self._sends: list[asyncio.Future[Any]] | None = None
        self._done: asyncio.Future[None] | None = None
        self.record = record
        self.topic: str = record.topic
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.key = key
        if reply_to is None:
            self.reply_topic: str | None = None
            self.reply_partition: int | None = None
            self._reply_id = b""
        else:
            self.reply_topic, self.reply_partition, self._reply_id = reply_to

    @property
    def headers(self) -> dict[str, Any]:
        """Every header of the record, decoded on first access."""
        headers = self._headers
        if headers is None:
            parse = self._server._codec.parse
            headers = {str(name): parse(raw) for name, raw in self.record.headers}
            self._headers = headers
        return headers

    @headers.setter
    def headers(self, value: dict[str, Any] | None) -> None:
        self._headers = value

    async def send_reply(self, reply: Reply) -> None:
        if self.reply_topic is not None:
            await self._server._reply(self, self.reply_topic, reply)

    async def settle(self, ok: bool) -> None:
        """The record's handling is over: once its replies are delivered, its offset counts
        as finished (and is committed with the next batch); an ordered partition goes on."""
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
        self._server._commits.finished(self._part, self.offset)


def read_record(server: KafkaServerTransport, part: Partition, record: Any) -> KafkaContext | None:
    """The context of ``record``; ``None`` (logged) when it cannot be decoded."""
    codec = server._codec
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
    if rid and reply_topic and server._kinds.get(record.topic) != "event":
        request_id = rid.decode("utf-8", "replace")
        reply_partition = partition_of(headers.get(REPLY_PARTITION))
        reply_to = (reply_topic.decode("utf-8", "replace"), reply_partition, rid)
    return KafkaContext(server, part, record, data, request_id, deadline, key, reply_to)
