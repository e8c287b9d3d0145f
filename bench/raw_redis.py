"""Raw Redis ceiling on redis-py's asyncio ``Connection`` with the hiredis parser.

Pub/sub only, like NestJS: requests are PUBLISHed on the route channel with the client's
own reply channel in the body; the server PUBLISHes the reply there. Every PUBLISH made
in one event-loop iteration leaves in one socket write (pipelining, hand-written RESP),
the PUBLISH acknowledgements are read and dropped by a reader task, and messages are read
straight from the hiredis parser (no ``PubSub`` object, no per-read timeout wrapper).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis.asyncio.connection import Connection

from .common import Config

dumps = orjson.dumps
loads = orjson.loads


async def open_connection(cfg: Config) -> tuple[Connection, Callable[[], Awaitable[Any]]]:
    url = urlsplit(cfg.redis_url)
    conn = Connection(host=url.hostname or "127.0.0.1", port=url.port or 6379, protocol=2)
    await conn.connect()  # type: ignore[no-untyped-call]
    parser = conn._parser
    return conn, parser.read_response  # type: ignore[attr-defined]


class Publisher:
    """PUBLISHes corked per loop iteration on one connection; replies are drained."""

    def __init__(self, conn: Connection, read: Callable[[], Awaitable[Any]]) -> None:
        self.conn = conn  # a dropped Connection closes its socket
        self._writer = conn._writer
        assert self._writer is not None
        self._read = read
        self._out: list[bytes] = []
        self._flushed: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._drainer = self._loop.create_task(self._drain_replies())

    def publish(self, channel: bytes, body: bytes) -> None:
        out = self._out
        out.append(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
            % (len(channel), channel, len(body), body)
        )
        if len(out) == 1:
            self._loop.call_soon(self._flush)

    def flushed(self) -> asyncio.Future[None]:
        if self._flushed is None:
            self._flushed = self._loop.create_future()
        return self._flushed

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._writer.write(b"".join(out))  # type: ignore[union-attr]
        flushed, self._flushed = self._flushed, None
        if flushed is not None:
            flushed.set_result(None)

    async def _drain_replies(self) -> None:
        read = self._read
        while True:
            await read()

    async def close(self) -> None:
        self._drainer.cancel()
        self._writer.close()  # type: ignore[union-attr]


async def subscribe(cfg: Config, *channels: str) -> tuple[Connection, Callable[[], Awaitable[Any]]]:
    """A connection subscribed to ``channels`` and its message reader."""
    conn, read = await open_connection(cfg)
    await conn.send_command("SUBSCRIBE", *channels)
    for _ in channels:
        await read()
    return conn, read


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    subscriber, read = await subscribe(cfg, cfg.rpc, cfg.event)
    publisher = Publisher(*await open_connection(cfg))
    publish = publisher.publish
    event = cfg.event.encode()

    async def loop() -> None:
        while True:
            _, channel, body = await read()
            if channel == event:
                on_event()
                continue
            msg = loads(body)
            reply = {"response": sum(msg["data"]["a"]), "isDisposed": True, "id": msg["id"]}
            publish(msg["reply"].encode(), dumps(reply))

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await publisher.close()
        await subscriber.disconnect()


class Client:
    def __init__(self, cfg: Config, publisher: Publisher, read: Callable[[], Awaitable[Any]]):
        self._rpc = cfg.rpc.encode()
        self._event = cfg.event.encode()
        self._reply = f"{cfg.rpc}.reply.{os.urandom(4).hex()}"
        self._publisher = publisher
        self._read = read
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._subscriber: Connection | None = None

    async def start(self, cfg: Config) -> None:
        self._subscriber, self._read = await subscribe(cfg, self._reply)
        self._task = self._loop.create_task(self._replies())

    async def _replies(self) -> None:
        read = self._read
        pending = self._pending
        while True:
            _, _, body = await read()
            msg = loads(body)
            fut = pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg.get("response"))

    async def call(self, data: Any) -> Any:
        self._next += 1
        rid = self._next
        fut = self._pending[rid] = self._loop.create_future()
        body = dumps({"pattern": "sum", "data": data, "id": rid, "reply": self._reply})
        self._publisher.publish(self._rpc, body)
        return await fut

    async def emit(self, data: Any) -> None:
        self._publisher.publish(self._event, dumps({"pattern": "ev", "data": data}))
        await self._publisher.flushed()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._publisher.close()
        if self._subscriber is not None:
            await self._subscriber.disconnect()


async def connect(cfg: Config) -> Client:
    publisher = Publisher(*await open_connection(cfg))
    client = Client(cfg, publisher, publisher._read)
    await client.start(cfg)
    return client
