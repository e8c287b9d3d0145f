"""One Redis connection's write side: commands batched per event-loop iteration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio.connection import Connection

from polybus.errors import TransportError

from ._common import ERRORS

__all__ = ["Pipe", "command"]

_HIGH_WATER = 4 * 1024 * 1024
"""Bytes queued on a connection beyond which senders wait for the socket."""
_SPLIT_BODY = 64 * 1024


def command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)


class Pipe:
    """One Redis connection's write side: what is written in one loop iteration is sent in
    one ``send_packed_command`` by a writer task; ``flushed()`` resolves once it was sent."""

    __slots__ = ("_flushed", "_out", "_size", "_task", "_wake", "conn")

    def __init__(self, conn: Connection, on_error: Callable[[BaseException], None]) -> None:
        self.conn = conn
        self._out: list[bytes] = []
        self._size = 0
        self._flushed: asyncio.Future[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._write_loop(on_error))

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._size += len(data)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    def publish(self, channel: bytes, body: bytes) -> None:
        if len(body) < _SPLIT_BODY:
            self.write(
                b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                % (len(channel), channel, len(body), body)
            )
        else:  # no copy of a large body into the command
            self.write(
                b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n" % (len(channel), channel, len(body))
            )
            self._out.append(body)
            self._out.append(b"\r\n")
            self._size += len(body)

    @property
    def backlogged(self) -> bool:
        return self._size > _HIGH_WATER

    def flushed(self) -> asyncio.Future[None]:
        """A future resolved once everything written so far was handed to the socket."""
        fut = self._flushed
        if fut is None:
            fut = self._flushed = asyncio.get_running_loop().create_future()
            if not self._out:
                fut.set_result(None)
                self._flushed = None
        return fut

    async def _write_loop(self, on_error: Callable[[BaseException], None]) -> None:
        conn = self.conn
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._out:
                    self._wake = loop.create_future()
                    await self._wake
                out, self._out, self._size = self._out, [], 0
                flushed, self._flushed = self._flushed, None
                try:
                    if not conn.is_connected:  # never let redis-py reconnect this connection
                        raise TransportError("connection closed")
                    await conn.send_packed_command(out, check_health=False)
                except BaseException:
                    _fail(flushed, TransportError("connection closed"))
                    raise
                del out  # not held (up to the high-water mark) while the loop idles
                if flushed is not None and not flushed.done():
                    flushed.set_result(None)
        except asyncio.CancelledError:
            _fail(self._flushed, TransportError("connection closed"))
            raise
        except Exception as exc:
            _fail(self._flushed, exc)
            on_error(exc)

    def cancel(self) -> None:
        self._task.cancel()


def _fail(fut: asyncio.Future[None] | None, exc: BaseException) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(ERRORS.error(exc, "redis connection lost"))
        fut.exception()  # marked retrieved: whoever awaits it still gets it
