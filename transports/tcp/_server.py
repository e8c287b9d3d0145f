"""The server half: a listening socket, a reader per connection, replies in frames."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from polybus.abc import Context, MessageSink, RouteSpec
from polybus.eager import start_eagerly
from polybus.errors import ProtocolError
from polybus.packets import Reply, decode_incoming, encode_reply, parse_deadline
from polybus.serializers import Serializer

from ._common import ERRORS, FEATURES, FramedConnection, check_text_serializer, log
from ._framing import frame
from ._options import TcpOptions

__all__ = ["TcpContext", "TcpServerTransport"]

_INBOX_HIGH_WATER = 4096
"""Frames queued on a connection beyond which reading from its socket pauses."""
_FRAMES_PER_TURN = 16
"""Frames a connection hands to the microservice before the event loop turns."""


class TcpContext(Context):
    """Context of a TCP message: the connection it came on (``peer`` is its address).

    ``headers`` is the packet's NestJS ``metadata`` (``None`` without it); ``deadline``
    comes from its ``x-polybus-deadline`` entry.
    """

    __slots__ = ("_conn", "_serializer")
    transport_name = "tcp"
    _conn: _ServerConnection

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        conn: _ServerConnection,
        serializer: Serializer,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(pattern, data, id, metadata, parse_deadline(metadata))
        self._conn = conn
        self._serializer = serializer

    @property
    def peer(self) -> Any:
        return self._conn.peer

    async def send_reply(self, reply: Reply) -> None:
        conn = self._conn
        if conn.closed.done():
            return
        conn.write(frame(encode_reply(self._serializer, reply)))
        if conn.paused:
            await conn.drain()

    async def settle(self, ok: bool) -> None:
        self._conn.settled()


class _ServerConnection(FramedConnection):
    """Frames are queued and fed to the microservice in order, by a reader that runs only
    while there are frames. A read of a few frames is handled in ``data_received`` itself
    (no task wake-up before the reply), going on in a task only if it has to wait for a
    handler slot; a larger backlog is worked off by a task, 16 frames per loop turn.

    After a protocol error (a corrupt frame, undecodable JSON) the connection reads nothing
    more, answers the requests it took before the error, then closes."""

    def __init__(self, server: TcpServerTransport) -> None:
        super().__init__(server.options.max_message_bytes, self._queue_frames)
        self._server = server
        self._inbox: deque[bytes] = deque()
        self._reader: asyncio.Task[None] | None = None
        """The running reader's task, held here: the event loop keeps only weak references."""
        self._reading = False
        self._reading_paused = False
        self._unsettled = 0
        """Messages handed to the microservice and not settled yet."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._connections.add(self)

    def _queue_frames(self, frames: list[bytes]) -> None:
        inbox = self._inbox
        inbox.extend(frames)
        if not self._reading:
            self._reading = True
            loop = self.loop
            if len(inbox) <= _FRAMES_PER_TURN:  # a caller waits on these: answer right now
                self._reader = start_eagerly(loop, self._read())
            else:  # a backlog: this read's turn ends here, the next chunk in the next one
                self._reader = loop.create_task(self._read())
        transport = self.transport
        if len(inbox) > _INBOX_HIGH_WATER and transport is not None and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()

    async def _read(self) -> None:
        server = self._server
        serializer = server._serializer
        inbox = self._inbox
        handled = 0
        try:
            while inbox and not self.closed.done():
                if handled == _FRAMES_PER_TURN:
                    # Let the replies of this chunk leave before taking the next one: the
                    # caller works on them while this side handles the rest.
                    handled = 0
                    await asyncio.sleep(0)
                    continue
                handled += 1
                body = inbox.popleft()
                try:
                    incoming = decode_incoming(serializer, body)
                except ProtocolError as exc:
                    log.warning("closing connection from %s: %s", self.peer, exc)
                    inbox.clear()  # what came after it is not answered
                    self.protocol_error(exc)
                    return
                sink = server._sink
                if sink is None:
                    inbox.clear()
                    return
                self._unsettled += 1
                await sink(
                    TcpContext(
                        incoming.pattern,
                        incoming.data,
                        incoming.id,
                        self,
                        serializer,
                        incoming.metadata,
                    )
                )
        finally:
            self._reading = False
            self._reader = None
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            self._close_when_answered()

    def protocol_error(self, exc: ProtocolError) -> None:
        """Reading stops; the frames taken before the error are still answered."""
        self.error = exc
        self._close_when_answered()

    def settled(self) -> None:
        self._unsettled -= 1
        self._close_when_answered()

    def _close_when_answered(self) -> None:
        if self.error is not None and not self._reading and self._unsettled <= 0:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server._connections.discard(self)


class TcpServerTransport:
    features = FEATURES

    def __init__(self, options: TcpOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = check_text_serializer(serializer)
        self._sink: MessageSink | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self.options.port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._sink = sink
        loop = asyncio.get_running_loop()
        with ERRORS("cannot listen on %s:%s", self.options.host, self.options.port):
            self._server = await loop.create_server(
                lambda: _ServerConnection(self),
                self.options.host,
                self.options.port,
                ssl=self.options.server_ssl(),
                reuse_address=True,
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self._connections:
            if conn.transport is not None:
                conn.transport.pause_reading()

    async def close(self) -> None:
        await self.stop()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._sink = None

    def __repr__(self) -> str:
        return f"TcpServerTransport({self.options.host}:{self.port})"
