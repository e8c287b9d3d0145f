"""The client half: one connection, every request multiplexed on it, replies matched by id."""

from __future__ import annotations

import asyncio

from polybus.abc import ConnectionStatus, Release, ReplySink, no_release
from polybus.errors import TransportError
from polybus.packets import Event, Request, encode_event, encode_request, read_reply
from polybus.serializers import Serializer

from ._common import ERRORS, FEATURES, FramedConnection, check_text_serializer
from ._framing import frame
from ._options import TcpOptions

__all__ = ["TcpClientTransport"]


class TcpClientTransport:
    """One connection, every request multiplexed on it; reconnects on the next call."""

    features = FEATURES

    def __init__(self, options: TcpOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = check_text_serializer(serializer)
        self._sink: ReplySink | None = None
        self._conn: FramedConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._lost_once = False

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        self._connecting = asyncio.Lock()
        await self._ensure()

    async def _ensure(self) -> FramedConnection:
        conn = self._conn
        if conn is not None:
            return conn
        assert self._connecting is not None
        async with self._connecting:
            if self._conn is not None:
                return self._conn
            options = self.options
            loop = asyncio.get_running_loop()
            with ERRORS("cannot connect to tcp://%s:%s", options.host, options.port):
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: FramedConnection(options.max_message_bytes, self._on_frames),
                        options.host,
                        options.port,
                        ssl=options.client_ssl(),
                        server_hostname=options.server_hostname if options.tls else None,
                    ),
                    options.connect_timeout,
                )
            self._conn = protocol
            protocol.closed.add_done_callback(lambda _: self._lost(protocol))
            if self._lost_once and self._sink is not None:
                self._sink.on_status(ConnectionStatus.CONNECTED)  # reconnected
            return protocol

    def _lost(self, conn: FramedConnection) -> None:
        if self._conn is conn:
            self._conn = None
            self._lost_once = True
            if self._sink is not None:
                reason = f": {conn.error}" if conn.error is not None else ""
                error = TransportError(f"connection closed{reason}")
                error.__cause__ = conn.error
                self._sink.on_status(ConnectionStatus.DISCONNECTED)
                self._sink.on_connection_lost(error)

    def _on_frames(self, frames: list[bytes]) -> None:
        """Replies to the sink; an undecodable one raises ``ProtocolError`` (a byte stream
        cannot be resynchronised), which ends the connection (as NestJS does) so pending
        requests fail now with ``TransportError``, not at their timeout."""
        sink = self._sink
        if sink is None:
            return
        serializer = self._serializer
        limit = self.options.max_message_bytes
        for body in frames:
            read_reply(sink, serializer, body, limit, "tcp", stream=True)

    async def request(self, request: Request) -> Release:
        conn = self._conn or await self._ensure()
        body = encode_request(self._serializer, request, metadata=self.options.send_metadata)
        conn.write(frame(self.options.check_size(body)))
        if conn.paused:
            await conn.drain()
        return no_release

    async def publish_event(self, event: Event) -> None:
        conn = self._conn or await self._ensure()
        body = encode_event(
            self._serializer,
            event,
            pattern_as_route=True,
            metadata=self.options.send_metadata,
        )
        conn.write(frame(self.options.check_size(body)))
        await conn.drain()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self._sink = None
        if conn is not None and conn.transport is not None:
            conn.close()
            await conn.closed

    def __repr__(self) -> str:
        scheme = "tcps" if self.options.tls else "tcp"
        return f"TcpClientTransport({scheme}://{self.options.host}:{self.options.port})"
