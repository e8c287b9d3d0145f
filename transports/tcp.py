"""TCP transport (``tcp://host:port``, ``tcps://`` for TLS), wire-compatible with NestJS.

Frames are ``<length>#<json>`` where ``length`` counts UTF-16 code units of the JSON text
(JavaScript ``string.length``), PROTOCOL.md §2. One client connection multiplexes every
request; replies are matched by ``id``. A corrupted frame or undecodable JSON closes only
its connection (on the client, its pending requests fail with ``TransportError`` and the
next call reconnects). Writes made in one event-loop iteration leave in one ``write()``
(corking). Headers and the caller's deadline travel in NestJS v12's packet ``metadata``
(``send_metadata``), which Nest servers accept and expose as ``TcpContext.getMetadata()``.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from polybus.abc import (
    ConnectionStatus,
    Context,
    Features,
    MessageSink,
    Release,
    ReplySink,
    RouteSpec,
)
from polybus.config import TransportOptions, TransportPlugin, split_url, url_query
from polybus.errors import ConfigError, ProtocolError, TransportError
from polybus.packets import (
    Event,
    Reply,
    Request,
    decode_incoming,
    decode_reply,
    encode_event,
    encode_reply,
    encode_request,
    parse_deadline,
)
from polybus.serializers import Serializer

__all__ = [
    "FrameDecoder",
    "TcpClientTransport",
    "TcpContext",
    "TcpOptions",
    "TcpServerTransport",
    "frame",
]

log = logging.getLogger("polybus.tcp")

FEATURES = Features(name="tcp", unknown_pattern="error", text_only=True, headers=True)

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_MAX_PREFIX_DIGITS = 12
_HIGH_WATER = 4 * 1024 * 1024


# -- framing ------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    """``<utf-16 length>#<body>`` for a UTF-8 JSON body."""
    if body.isascii():
        units = len(body)
    else:
        text = body.decode("utf-8")
        units = len(text) + len(_ASTRAL.findall(text))
    return b"%d#%b" % (units, body)


class FrameDecoder:
    """Splits a byte stream into frame bodies; raises ``ProtocolError`` on corrupt input."""

    __slots__ = ("_buf", "_max_units", "_need")

    def __init__(self, max_units: int) -> None:
        self._buf = bytearray()
        self._max_units = max_units
        self._need = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        if self._need > len(buf):
            return []
        self._need = 0
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            hash_at = buf.find(b"#", pos, pos + _MAX_PREFIX_DIGITS + 1)
            if hash_at < 0:
                if end - pos > _MAX_PREFIX_DIGITS:
                    raise ProtocolError("corrupted frame: no '#' after the length prefix")
                break
            prefix = bytes(buf[pos:hash_at])
            if not prefix.isdigit():
                raise ProtocolError(f"corrupted frame length {prefix[:20]!r}")
            units = int(prefix)
            if units > self._max_units:
                raise ProtocolError(
                    f"frame of {units} characters exceeds the maximum of {self._max_units}"
                )
            start = hash_at + 1
            if start + units > end:
                self._need = start + units - pos  # at least this many bytes from the frame start
                break
            chunk = bytes(buf[start : start + units])
            if chunk.isascii():
                frames.append(chunk)
                pos = start + units
                continue
            size = _utf8_size_of_units(buf, start, units)
            if size is None:
                self._need = end - pos + 1  # some characters are still on their way
                break
            frames.append(bytes(buf[start : start + size]))
            pos = start + size
        del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _utf8_size_of_units(buf: bytearray, start: int, units: int) -> int | None:
    """Bytes that hold ``units`` UTF-16 units from ``start``; None when more data is needed."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(bytes(buf[start : start + 3 * units]), final=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in frame: {exc.reason}") from None
    if len(text) + len(_ASTRAL.findall(text)) < units:
        return None
    # chars + (astral chars among them) grows by 1 or 2 per char: start from a lower bound
    # and walk forward to the exact count.
    chars = units - len(_ASTRAL.findall(text, 0, units))
    counted = chars + len(_ASTRAL.findall(text, 0, chars))
    while counted < units:
        counted += 2 if ord(text[chars]) > 0xFFFF else 1
        chars += 1
    if counted != units:
        raise ProtocolError("corrupted frame: length splits a character")
    return len(text[:chars].encode("utf-8"))


# -- options ------------------------------------------------------------------------------


@dataclass
class TcpOptions(TransportOptions):
    host: str = "localhost"
    port: int = 3000
    tls: bool = False
    ssl_context: ssl.SSLContext | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_hostname: str | None = None
    connect_timeout: float = 10.0
    send_metadata: bool = True
    """Client: send headers and the request deadline in the packet's ``metadata``."""

    @classmethod
    def from_url(cls, url: str) -> TcpOptions:
        parts = split_url(url, ("tcp", "tcps"))
        query = url_query(parts)
        options = cls(
            host=parts.hostname or "localhost",
            port=3000 if parts.port is None else parts.port,
            tls=parts.scheme == "tcps",
        )
        names = {"ca": "ca_file", "cert": "cert_file", "key": "key_file"}
        overrides: dict[str, Any] = {names.get(k, k): v for k, v in query.items()}
        for key in ("max_message_bytes", "port"):
            if key in overrides:
                overrides[key] = _int(key, overrides[key])
        if "connect_timeout" in overrides:
            overrides["connect_timeout"] = float(overrides["connect_timeout"])
        for key in ("send_metadata", "tls"):
            if isinstance(overrides.get(key), str):
                overrides[key] = _bool(key, overrides[key])
        return options.with_overrides(overrides)

    @classmethod
    def from_nest(cls, options: Any) -> TcpOptions:
        options = dict(options)
        tls = options.pop("tlsOptions", None)
        result = cls().with_overrides(options)
        if tls is not None:
            result.tls = True
            if isinstance(tls, ssl.SSLContext):
                result.ssl_context = tls
            elif isinstance(tls, dict):
                names = {"ca": "ca_file", "cert": "cert_file", "key": "key_file"}
                result = result.with_overrides(
                    {names.get(str(k), str(k)): v for k, v in tls.items()}
                )
        return result

    def client_ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def server_ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        if not self.cert_file:
            raise ConfigError("a TLS server needs cert_file (and key_file) or ssl_context")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_file)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file:
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"option {name} must be a boolean, got {value!r}")


def _int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name} must be an integer, got {value!r}") from None


# -- connection (shared by both sides) ----------------------------------------------------


class _Connection(asyncio.Protocol):
    """A framed connection: corked writes, flow control, frames handed to ``on_frames``."""

    def __init__(self, max_units: int, on_frames: Callable[[list[bytes]], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(max_units)
        self._on_frames = on_frames
        self._out: list[bytes] = []
        self._paused: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peer: Any = None
        self.error: BaseException | None = None
        """Why we aborted the connection (a ``ProtocolError``), if we did."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
            if frames:
                self._on_frames(frames)
        except ProtocolError as exc:
            log.warning("closing connection with %s: %s", self.peer, exc)
            self.abort(exc)

    def write(self, data: bytes) -> None:
        """Queue a frame; everything queued in this loop iteration leaves in one write."""
        out = self._out
        out.append(data)
        if len(out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        if self._paused is not None:
            await asyncio.shield(self._paused)

    def pause_writing(self) -> None:
        self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    def abort(self, exc: BaseException | None = None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        if not self.closed.done():
            self.closed.set_result(None)


# -- client -------------------------------------------------------------------------------


class TcpClientTransport:
    """One connection, every request multiplexed on it; reconnects on the next call."""

    features = FEATURES

    def __init__(self, options: TcpOptions, serializer: Serializer) -> None:
        if serializer.binary:
            raise ConfigError(f"TCP frames carry text; the {serializer.name} serializer is binary")
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._lost_once = False

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        self._connecting = asyncio.Lock()
        await self._ensure()

    async def _ensure(self) -> _Connection:
        conn = self._conn
        if conn is not None:
            return conn
        assert self._connecting is not None
        async with self._connecting:
            if self._conn is not None:
                return self._conn
            options = self.options
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Connection(options.max_message_bytes, self._on_frames),
                        options.host,
                        options.port,
                        ssl=options.client_ssl(),
                        server_hostname=options.server_hostname if options.tls else None,
                    ),
                    options.connect_timeout,
                )
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                raise TransportError(
                    f"cannot connect to tcp://{options.host}:{options.port}: "
                    f"{exc or type(exc).__name__}"
                ) from exc
            self._conn = protocol
            protocol.closed.add_done_callback(lambda _: self._lost(protocol))
            if self._lost_once and self._sink is not None:
                self._sink.on_status(ConnectionStatus.CONNECTED)  # reconnected
            return protocol

    def _lost(self, conn: _Connection) -> None:
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
        """Replies to the sink; an undecodable one raises ``ProtocolError``, which closes
        the connection (as NestJS does) so pending requests fail now, not at their timeout."""
        sink = self._sink
        if sink is None:
            return
        serializer = self._serializer
        for body in frames:
            sink.on_reply(decode_reply(serializer, body))

    async def request(self, request: Request) -> Release:
        conn = self._conn or await self._ensure()
        body = encode_request(self._serializer, request, metadata=self.options.send_metadata)
        conn.write(frame(self._checked(body)))
        if conn._paused is not None:
            await conn.drain()
        return _noop

    async def publish_event(self, event: Event) -> None:
        conn = self._conn or await self._ensure()
        body = encode_event(
            self._serializer,
            event,
            pattern_as_route=True,
            metadata=self.options.send_metadata,
        )
        conn.write(frame(self._checked(body)))
        await conn.drain()

    def _checked(self, body: bytes) -> bytes:
        if len(body) > self.options.max_message_bytes:
            raise ProtocolError(
                f"message of {len(body)} bytes exceeds "
                f"max_message_bytes={self.options.max_message_bytes}"
            )
        return body

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self._sink = None
        if conn is not None and conn.transport is not None:
            conn._flush()
            conn.transport.close()
            await conn.closed

    def __repr__(self) -> str:
        scheme = "tcps" if self.options.tls else "tcp"
        return f"TcpClientTransport({scheme}://{self.options.host}:{self.options.port})"


def _noop() -> None:
    pass


# -- server -------------------------------------------------------------------------------


class TcpContext(Context):
    """Context of a TCP message: the connection it came on (``peer`` is its address).

    ``headers`` is the packet's NestJS ``metadata`` (``None`` without it); ``deadline``
    comes from its ``x-polybus-deadline`` entry.
    """

    __slots__ = ("_conn", "_serializer")
    transport_name = "tcp"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        conn: _Connection,
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
        if conn._paused is not None:
            await conn.drain()


class _ServerConnection(_Connection):
    """Frames are queued and fed to the microservice by one reader task per connection."""

    def __init__(self, server: TcpServerTransport) -> None:
        super().__init__(server.options.max_message_bytes, self._queue_frames)
        self._server = server
        self._inbox: deque[bytes] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._connections.add(self)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def _queue_frames(self, frames: list[bytes]) -> None:
        self._inbox.extend(frames)
        if len(self._inbox) > 4096 and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _read(self) -> None:
        server = self._server
        serializer = server._serializer
        inbox = self._inbox
        loop = asyncio.get_running_loop()
        while not self.closed.done():
            if not inbox:
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            body = inbox.popleft()
            try:
                incoming = decode_incoming(serializer, body)
            except ProtocolError as exc:
                log.warning("closing connection from %s: %s", self.peer, exc)
                self.abort(exc)
                return
            sink = server._sink
            if sink is None:
                return
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

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server._connections.discard(self)
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TcpServerTransport:
    features = FEATURES

    def __init__(self, options: TcpOptions, serializer: Serializer) -> None:
        if serializer.binary:
            raise ConfigError(f"TCP frames carry text; the {serializer.name} serializer is binary")
        self.options = options
        self._serializer = serializer
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
        try:
            self._server = await loop.create_server(
                lambda: _ServerConnection(self),
                self.options.host,
                self.options.port,
                ssl=self.options.server_ssl(),
                reuse_address=True,
            )
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {self.options.host}:{self.options.port}: {exc}"
            ) from exc

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self._connections:
            if conn.transport is not None:
                conn.transport.pause_reading()

    async def close(self) -> None:
        await self.stop()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn._flush()
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._sink = None

    def __repr__(self) -> str:
        return f"TcpServerTransport({self.options.host}:{self.port})"


PLUGIN = TransportPlugin("TCP", TcpOptions, TcpClientTransport, TcpServerTransport)
