"""Raw RabbitMQ ceiling: aio-pika's connection, direct reply-to, one work queue.

Requests and events go to the default exchange with routing key = the queue (as NestJS
does); requests carry ``reply_to = amq.rabbitmq.reply-to`` and a ``correlation_id``. Both
sides consume with ``no_ack``. ``BENCH_RMQ_MODE`` picks how messages are published:

- ``aiopika``: ``Exchange.publish(Message(...))`` (aio-pika's public API);
- ``aiormq``: the underlying aiormq channel's ``basic_publish(..., wait=False)``;
- ``frames`` (default, fastest measured): publish frames marshalled by hand and every
  publish of one event-loop iteration put on aiormq's write queue as one frame (corking).

Consumers are aiormq consumers (``channel.basic_consume``) in every mode: aio-pika's
``IncomingMessage`` wrapper only adds cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import orjson
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.commands import Basic
from pamqp.frame import marshal

from .common import Config

dumps = orjson.dumps
loads = orjson.loads
MODE = os.environ.get("BENCH_RMQ_MODE", "frames")
REPLY_TO = "amq.rabbitmq.reply-to"

_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_FIXED = struct.Struct(">HHQH")


def _short(value: bytes) -> bytes:
    return bytes((len(value),)) + value


class Publisher:
    """Publishes to the default exchange, in the way ``MODE`` says."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._raw: Any = channel.channel  # the aiormq channel under aio-pika's
        self._number: int = self._raw.number
        self._methods: dict[str, bytes] = {}
        self._out: list[bytes] = []
        self._drain: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def publish(
        self, key: str, body: bytes, correlation_id: bytes | None = None, reply_to: bytes = b""
    ) -> None:
        if MODE == "frames":
            self._queue(key, body, correlation_id, reply_to)
        elif MODE == "aiormq":
            props = Basic.Properties(
                correlation_id=None if correlation_id is None else correlation_id.decode(),
                reply_to=reply_to.decode() or None,
            )
            await self._raw.basic_publish(body, routing_key=key, properties=props, wait=False)
        else:
            message = aio_pika.Message(
                body,
                correlation_id=None if correlation_id is None else correlation_id.decode(),
                reply_to=reply_to.decode() or None,
            )
            await self._channel.default_exchange.publish(message, routing_key=key)

    async def flushed(self) -> None:
        if self._out:
            if self._drain is None:
                self._drain = self._loop.create_future()
            await self._drain

    def _queue(self, key: str, body: bytes, correlation_id: bytes | None, reply_to: bytes) -> None:
        method = self._methods.get(key)
        if method is None:
            method = self._methods[key] = marshal(
                Basic.Publish(exchange="", routing_key=key), self._number
            )
        flags = 0
        props = b""
        if correlation_id is not None:
            flags |= 0x0400
            props += _short(correlation_id)
        if reply_to:
            flags |= 0x0200
            props += _short(reply_to)
        header = _HEADER_FIXED.pack(60, 0, len(body), flags) + props
        out = self._out
        if not out:
            self._loop.call_soon(self._flush)
        out.append(method)
        out.append(_FRAME_HEAD.pack(2, self._number, len(header)) + header + b"\xce")
        out.append(_FRAME_HEAD.pack(3, self._number, len(body)) + body + b"\xce")

    def _flush(self) -> None:
        out, self._out = self._out, []
        drain, self._drain = self._drain, None
        frame = ChannelFrame(payload=b"".join(out), should_close=False, drain_future=drain)
        self._raw.write_queue.put_nowait(frame)


async def open_channel(cfg: Config) -> tuple[aio_pika.abc.AbstractConnection, Publisher]:
    connection = await aio_pika.connect(cfg.amqp_url)
    channel = await connection.channel(publisher_confirms=False)
    return connection, Publisher(channel)


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    connection, publisher = await open_channel(cfg)
    raw = publisher._raw
    await raw.queue_declare(cfg.queue, durable=True)
    publish = publisher.publish

    async def on_message(message: DeliveredMessage) -> None:
        props = message.header.properties
        msg = loads(message.body)
        if props.reply_to is None or props.correlation_id is None:
            on_event()
            return
        reply = dumps({"response": sum(msg["data"]["a"]), "isDisposed": True})
        await publish(props.reply_to, reply, props.correlation_id.encode())

    await raw.basic_consume(cfg.queue, on_message, no_ack=True)
    try:
        yield
    finally:
        await connection.close()


async def cleanup(cfg: Config) -> None:
    """Delete the run's queues (durable: FastStream uses a second one for events)."""
    connection = await aio_pika.connect(cfg.amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (cfg.queue, f"{cfg.queue}.ev"):
            await channel.queue_delete(queue)


class Client:
    def __init__(self, cfg: Config, connection: Any, publisher: Publisher) -> None:
        self._connection = connection
        self._publisher = publisher
        self._queue = cfg.queue
        self._rpc = cfg.rpc
        self._event = cfg.event
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._next = 0
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        pending = self._pending

        async def on_reply(message: DeliveredMessage) -> None:
            fut = pending.pop((message.header.properties.correlation_id or "").encode(), None)
            if fut is not None and not fut.done():
                fut.set_result(loads(message.body).get("response"))

        await self._publisher._raw.basic_consume(REPLY_TO, on_reply, no_ack=True)

    async def call(self, data: Any) -> Any:
        self._next += 1
        rid = b"%x" % self._next
        fut = self._pending[rid] = self._loop.create_future()
        body = dumps({"pattern": self._rpc, "data": data, "id": rid.decode()})
        await self._publisher.publish(self._queue, body, rid, REPLY_TO.encode())
        return await fut

    async def emit(self, data: Any) -> None:
        await self._publisher.publish(self._queue, dumps({"pattern": self._event, "data": data}))
        await self._publisher.flushed()

    async def close(self) -> None:
        await self._connection.close()


async def connect(cfg: Config) -> Client:
    connection, publisher = await open_channel(cfg)
    await publisher._raw.queue_declare(cfg.queue, durable=True)
    client = Client(cfg, connection, publisher)
    await client.start()
    return client
