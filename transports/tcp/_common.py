"""What both halves share: the features, the serializer check and the framed connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from polybus.abc import Features
from polybus.errors import ConfigError, ErrorMap, ProtocolError, TransportError
from polybus.serializers import Serializer

from ._framing import CorruptStream, FrameDecoder

__all__ = ["ERRORS", "FEATURES", "FramedConnection", "check_text_serializer"]

log = logging.getLogger("polybus.tcp")

FEATURES = Features(
    name="tcp",
    unknown_pattern="error",
    text_only=True,
    headers=True,
    unreadable_reply="ends_connection",
)

ERRORS = ErrorMap(((OSError, asyncio.TimeoutError), TransportError, None))
"""The socket's exceptions (``ssl.SSLError`` is an ``OSError``) as polybus's."""


def check_text_serializer(serializer: Serializer) -> Serializer:
    """``serializer`` if it writes text, else ``ConfigError``: TCP frames carry JSON text."""
    if serializer.binary:
        raise ConfigError(f"TCP frames carry text; the {serializer.name} serializer is binary")
    return serializer


class FramedConnection(asyncio.Protocol):
    """A framed connection: corked writes, flow control, frames handed to ``on_frames``."""

    def __init__(self, max_units: int, on_frames: Callable[[list[bytes]], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(max_units)
        self._on_frames = on_frames
        self._out: list[bytes] = []
        self._paused: asyncio.Future[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.peer: Any = None
        self.error: BaseException | None = None
        """Why we closed or aborted the connection (a ``ProtocolError``), if we did."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return  # the stream broke: nothing after that point is read
        try:
            frames = self._decoder.feed(data)
        except CorruptStream as exc:
            frames = exc.frames
            error: ProtocolError | None = exc
        else:
            error = None
        try:
            if frames:
                self._on_frames(frames)
        except ProtocolError as exc:
            error = exc
        if error is not None:
            log.warning("closing connection with %s: %s", self.peer, error)
            self.protocol_error(error)

    def protocol_error(self, exc: ProtocolError) -> None:
        """The peer broke the protocol after the frames already handed to ``on_frames``:
        abort (the client's pending requests fail now). The server overrides it."""
        self.abort(exc)

    def write(self, data: bytes) -> None:
        """Queue a frame; everything queued in this loop iteration leaves in one write."""
        out = self._out
        out.append(data)
        if len(out) == 1:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    @property
    def paused(self) -> bool:
        """True while the socket's buffer is over its high-water mark: await ``drain()``."""
        return self._paused is not None

    async def drain(self) -> None:
        if self._paused is not None:
            await asyncio.shield(self._paused)

    def pause_writing(self) -> None:
        self._paused = self.loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    def abort(self, exc: BaseException | None = None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Send what is queued, then close the socket."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        if not self.closed.done():
            self.closed.set_result(None)
