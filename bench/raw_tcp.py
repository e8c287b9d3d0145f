"""Raw TCP ceiling: asyncio protocols, ``<len>#json`` frames (orjson), integer correlation ids.

Client: one connection, a dict of futures by id, every frame written in one event-loop
iteration sent in one ``write()`` (corking). Server: handles each frame inline in
``data_received`` (no task per message) and answers a whole read in one ``write()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson

from .common import Config

dumps = orjson.dumps
loads = orjson.loads
CHUNK = int(os.environ.get("BENCH_RAW_TCP_CHUNK", "0")) or 1 << 30
"""Replies written every CHUNK requests of one read (default: one write per read)."""


def split_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete frame bodies in ``buf`` and the unconsumed rest (ASCII JSON only)."""
    frames = []
    pos = 0
    size = len(buf)
    while True:
        mark = buf.find(b"#", pos)
        if mark < 0:
            break
        end = mark + 1 + int(buf[pos:mark])
        if end > size:
            break
        frames.append(buf[mark + 1 : end])
        pos = end
    return frames, buf[pos:]


class ServerProtocol(asyncio.Protocol):
    def __init__(self, on_event: Callable[[], None]) -> None:
        self._on_event = on_event
        self._buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        frames, self._buf = split_frames(self._buf + data if self._buf else data)
        out = []
        transport = self.transport
        assert transport is not None
        for body in frames:
            msg = loads(body)
            rid = msg.get("id")
            if rid is None:
                self._on_event()
                continue
            reply = dumps({"response": sum(msg["data"]["a"]), "isDisposed": True, "id": rid})
            out.append(b"%d#%b" % (len(reply), reply))
            if len(out) == CHUNK:  # let the client start on these while we go on
                transport.write(b"".join(out))
                out = []
        if out:
            transport.write(b"".join(out))


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ServerProtocol(on_event), "127.0.0.1", cfg.tcp_port, reuse_address=True
    )
    try:
        yield
    finally:
        server.close()


class Client(asyncio.Protocol):
    def __init__(self, cfg: Config) -> None:
        self._rpc = cfg.rpc
        self._event = cfg.event
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._out: list[bytes] = []
        self._buf = b""
        self._paused: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        frames, self._buf = split_frames(self._buf + data if self._buf else data)
        pending = self._pending
        for body in frames:
            msg = loads(body)
            fut = pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg.get("response"))

    def pause_writing(self) -> None:
        self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.set_result(None)

    def _write(self, body: bytes) -> None:
        out = self._out
        out.append(b"%d#%b" % (len(body), body))
        if len(out) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        assert self.transport is not None
        self.transport.write(b"".join(out))

    async def call(self, data: Any) -> Any:
        self._next += 1
        rid = self._next
        fut = self._pending[rid] = self._loop.create_future()
        self._write(dumps({"pattern": self._rpc, "data": data, "id": rid}))
        return await fut

    async def emit(self, data: Any) -> None:
        self._write(dumps({"pattern": self._event, "data": data}))
        if self._paused is not None:
            await self._paused
        else:
            await asyncio.sleep(0)  # let the other emitters queue theirs: one write for all

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(cfg: Config) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(cfg), "127.0.0.1", cfg.tcp_port)
    return client
