"""Redis transport (``redis://[user:pass@]host:port[/db]``, ``rediss://`` for TLS).

Pure pub/sub, wire-compatible with NestJS (PROTOCOL.md §3): a request is published on its
route channel as ``{"pattern", "data", "id"}`` (an event without ``id``) and its replies
come back on ``<channel>.reply``. Each side holds exactly two connections whatever the load:
a subscriber and a publisher.

- The client subscribes to ``<route>.reply`` and waits for the confirmation before it
  publishes; one subscription per reply channel is shared by every pending request on it
  (reference-counted) and kept for ``reply_linger`` seconds after the last one ends, so a
  steady stream of calls does not subscribe and unsubscribe over and over. Replies for ids
  this client does not wait for (other clients share the channel) are dropped by core.
- The server subscribes to every handler route (``PSUBSCRIBE`` with ``wildcards``) and
  replies on ``<channel the request arrived on>.reply``.
- Headers and the caller's deadline ride in the packet's NestJS v12 ``metadata`` object
  (``send_metadata``), which Nest servers accept and expose (``RedisContext.getMetadata()``).
- Every command written in one event-loop iteration leaves in one socket write (a
  pipeline); the connections run RESP2 without socket timeouts, and messages are read
  straight from redis-py's (hiredis) parser rather than through ``PubSub``.
- A lost connection fails the pending requests, then both connections are rebuilt with
  backoff and every subscription is restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import RedisError, ResponseError

from polybus.abc import (
    ConnectionStatus,
    Context,
    Features,
    MessageSink,
    Release,
    ReplySink,
    RouteSpec,
)
from polybus.config import TransportOptions, TransportPlugin, split_url, url_credentials, url_query
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

__all__ = ["RedisClientTransport", "RedisContext", "RedisOptions", "RedisServerTransport"]

log = logging.getLogger("polybus.redis")

FEATURES = Features(
    name="redis",
    unknown_pattern="timeout",
    broadcast=True,
    headers=True,
    restart_command=(
        "sh",
        "-c",
        "redis-cli -p 6379 shutdown nosave; sleep 0.5; "
        "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ),
)

_HIGH_WATER = 4 * 1024 * 1024
"""Bytes queued on a connection beyond which senders wait for the socket."""
_SPLIT_BODY = 64 * 1024
_KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}
"""A silently dead peer is noticed in about 45 s."""
_CONFIRMATIONS = frozenset((b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe"))


# -- options ------------------------------------------------------------------------------


@dataclass
class RedisOptions(TransportOptions):
    """Where and how to reach Redis. URL query parameters and NestJS options map here."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_ca_data: str | None = field(default=None, repr=False)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    """``required``, ``optional`` or ``none``."""
    ssl_check_hostname: bool | None = None
    wildcards: bool = False
    """Server: ``PSUBSCRIBE`` the routes (NestJS ``wildcards``); replies go to the channel."""
    client_name: str | None = None
    send_metadata: bool = True
    """Client: send headers and the request deadline in the packet's NestJS ``metadata``."""
    connect_timeout: float = 10.0
    reply_linger: float = 1.0
    """Seconds a client keeps an idle reply-channel subscription before unsubscribing."""
    retry_delay: float = 0.1
    """First reconnect delay (seconds); it doubles up to ``max_retry_delay``."""
    max_retry_delay: float = 5.0
    retry_attempts: int | None = None
    """Reconnect attempts before giving up (``None``: forever)."""
    socket_read_size: int = 65536

    def __post_init__(self) -> None:
        # URL query values arrive as text: convert them to the field's type.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and not str(f.type).startswith("str"):
                setattr(self, f.name, _parse_value(f.name, str(f.type), value))

    @classmethod
    def from_url(cls, url: str) -> RedisOptions:
        parts = split_url(url, ("redis", "rediss"))
        user, password = url_credentials(parts)
        path = parts.path.strip("/")
        options = cls(
            host=parts.hostname or "localhost",
            port=6379 if parts.port is None else parts.port,
            db=_parse_value("db", "int", path) if path else 0,
            username=user,
            password=password,
            tls=parts.scheme == "rediss",
        )
        return options.with_overrides(url_query(parts))

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> RedisOptions:
        """NestJS ``RedisOptions['options']``: ioredis names; ``tls`` may be an object."""
        opts = dict(options)
        for millis, name in (("retryDelay", "retry_delay"), ("connectTimeout", "connect_timeout")):
            if millis in opts:
                opts[name] = float(opts.pop(millis)) / 1000.0
        tls = opts.pop("tls", None)
        result = cls().with_overrides(opts)
        if tls:
            changes: dict[str, Any] = {"tls": True}
            if isinstance(tls, Mapping):
                ca = tls.get("ca")
                if ca is not None:
                    ca = ca.decode() if isinstance(ca, bytes) else str(ca)
                    changes["ssl_ca_data" if "-----BEGIN" in ca else "ssl_ca_certs"] = ca
                if tls.get("cert") is not None:
                    changes["ssl_certfile"] = str(tls["cert"])
                if tls.get("key") is not None:
                    changes["ssl_keyfile"] = str(tls["key"])
                if tls.get("rejectUnauthorized") is False:
                    changes["ssl_cert_reqs"] = "none"
            result = dataclasses.replace(result, **changes)
        return result

    @property
    def address(self) -> str:
        """The server address without credentials, for messages."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"

    def connection(self) -> Connection:
        """A new, unconnected redis-py connection (RESP2, no socket timeout)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "client_name": self.client_name,
            "socket_timeout": None,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            "socket_keepalive_options": _KEEPALIVE,
            "socket_read_size": self.socket_read_size,
            "protocol": 2,
        }
        if not self.tls:
            return Connection(**kwargs)
        check_hostname = self.ssl_check_hostname
        if check_hostname is None:
            check_hostname = self.ssl_cert_reqs == "required"
        return SSLConnection(
            ssl_ca_certs=self.ssl_ca_certs,
            ssl_ca_data=self.ssl_ca_data,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            ssl_cert_reqs=self.ssl_cert_reqs,
            ssl_check_hostname=check_hostname,
            **kwargs,
        )


def _parse_value(name: str, kind: str, text: str) -> Any:
    try:
        if kind.startswith("bool"):
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"option {name} must be of type {kind}, got {text!r}") from None
    return text


# -- wire ---------------------------------------------------------------------------------


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)


class _Pipe:
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
        fut.set_exception(_transport_error(exc))
        fut.exception()  # marked retrieved: whoever awaits it still gets it


def _transport_error(exc: BaseException) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    error = TransportError(f"redis connection lost: {exc or type(exc).__name__}")
    error.__cause__ = exc
    return error


MessageHandler = Callable[[bytes, bytes, "bytes | None"], "Awaitable[None] | None"]


class _Link:
    """A subscriber and a publisher connection to one Redis, rebuilt after a loss.

    ``on_message(channel, body, pattern)`` gets every pub/sub message (``pattern`` is the
    subscribed pattern of a ``pmessage``); an awaitable it returns is awaited before the
    next message is read (back-pressure). ``on_restore(link)`` runs after every
    (re)connection, before the link counts as up: it restores the subscriptions.
    """

    def __init__(
        self,
        options: RedisOptions,
        on_message: MessageHandler,
        on_restore: Callable[[_Link], Awaitable[None]],
        on_lost: Callable[[TransportError], None] | None = None,
        on_status: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        self.options = options
        self._on_message = on_message
        self._on_restore = on_restore
        self._on_lost = on_lost
        self._on_status = on_status
        self.session = 0
        self.up = False
        self.sub: _Pipe | None = None
        self.pub: _Pipe | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._expect: deque[list[Any]] = deque()  # per command: [replies left, future]
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reconnecting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failure: TransportError | None = None
        self._warned_publish = False

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open both connections and restore the subscriptions, or raise TransportError."""
        options = self.options
        conns = [options.connection(), options.connection()]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(_open(conn) for conn in conns), return_exceptions=True),
                options.connect_timeout,
            )
        except asyncio.TimeoutError:
            await _disconnect(conns)
            raise TransportError(
                f"cannot connect to {options.address}: no answer in {options.connect_timeout:g}s"
            ) from None
        except BaseException:
            await _disconnect(conns)
            raise
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await _disconnect(conns)
            if not isinstance(failure, (RedisError, OSError, asyncio.TimeoutError)):
                raise failure
            raise TransportError(
                f"cannot connect to {options.address}: {failure or type(failure).__name__}"
            ) from failure
        if self._closed:
            await _disconnect(conns)
            raise TransportError("redis transport closed")
        self.session += 1
        session = self.session
        self._expect.clear()
        lost = self._lost_callback(session)
        self.sub = _Pipe(conns[0], lost)
        self.pub = _Pipe(conns[1], lost)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_subscriber(conns[0], lost)),
            loop.create_task(self._read_publisher(conns[1], lost)),
        ]
        try:
            await self._on_restore(self)
        except BaseException as exc:
            self._teardown(_transport_error(exc))
            if isinstance(exc, TransportError) or not isinstance(exc, Exception):
                raise
            raise _transport_error(exc) from exc
        if self.session != session or self.sub is None:
            raise TransportError(f"lost the connection to {options.address} while subscribing")
        self.up = True
        if not self._ready.done():
            self._ready.set_result(None)

    def _lost_callback(self, session: int) -> Callable[[BaseException], None]:
        def lost(exc: BaseException) -> None:
            if session == self.session and not self._closed:
                self._lost(exc)

        return lost

    def _lost(self, exc: BaseException) -> None:
        if self.sub is None:
            return
        error = _transport_error(exc)
        was_up = self.up
        self._teardown(error)
        if not was_up:
            return  # a connect in progress sees the failure itself
        log.warning("lost the connection to %s: %s; reconnecting", self.options.address, exc)
        self._ready = asyncio.get_running_loop().create_future()
        self._report(ConnectionStatus.DISCONNECTED)
        if self._on_lost is not None:
            self._on_lost(error)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _teardown(self, error: TransportError) -> None:
        self.up = False
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        conns = []
        for pipe in (self.sub, self.pub):
            if pipe is not None:
                pipe.cancel()
                conns.append(pipe.conn)
        self.sub = self.pub = None
        expect, self._expect = self._expect, deque()
        for _, fut in expect:
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()
        if conns:
            task = asyncio.get_running_loop().create_task(_disconnect(conns))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _reconnect(self) -> None:
        options = self.options
        delay = options.retry_delay
        attempts = 0
        self._report(ConnectionStatus.RECONNECTING)
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except TransportError as exc:
                attempts += 1
                if options.retry_attempts is not None and attempts >= options.retry_attempts:
                    log.error(
                        "giving up on %s after %d attempts: %s", options.address, attempts, exc
                    )
                    self._failure = exc
                    if not self._ready.done():
                        self._ready.set_exception(exc)
                        self._ready.exception()
                    self._report(ConnectionStatus.DISCONNECTED)
                    return
                log.info("reconnecting to %s failed: %s", options.address, exc)
                delay = min(delay * 2, options.max_retry_delay)
                continue
            log.info("reconnected to %s", options.address)
            self._report(ConnectionStatus.CONNECTED)
            return

    def _report(self, status: ConnectionStatus) -> None:
        if self._on_status is not None:
            self._on_status(status)

    async def wait_up(self, timeout: float | None = None) -> None:
        """Return once the link is up; ``TransportError`` if it is closed or stays down."""
        if self.up:
            return
        if self._closed:
            raise TransportError("redis transport closed")
        if self._failure is not None:
            raise TransportError(f"{self.options.address} is unreachable: {self._failure}")
        wait = self.options.connect_timeout if timeout is None else max(timeout, 0.0)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), wait)
        except asyncio.TimeoutError:
            raise TransportError(
                f"not connected to {self.options.address} (reconnecting)"
            ) from None

    # -- reading ----------------------------------------------------------------------------

    async def _read_subscriber(
        self, conn: Connection, lost: Callable[[BaseException], None]
    ) -> None:
        handle = self._on_message
        expect = self._expect
        read = _reader(conn)
        try:
            while True:
                try:
                    msg = await read()
                except ResponseError as exc:
                    msg = exc
                if type(msg) is not list:
                    if isinstance(msg, ResponseError):  # a refused (P)SUBSCRIBE
                        self._refused(msg)
                    continue
                kind = msg[0]
                if kind == b"message" or kind == b"pmessage":
                    try:
                        if kind == b"message":
                            pending = handle(msg[1], msg[2], None)
                        else:
                            pending = handle(msg[2], msg[3], msg[1])
                        if pending is not None:
                            await pending
                    except Exception:  # a bug downstream must not look like a lost connection
                        log.exception("failed to handle a message on %r", msg[-2])
                elif kind in _CONFIRMATIONS and expect:
                    head = expect[0]
                    head[0] -= 1
                    if head[0] <= 0:
                        expect.popleft()
                        fut = head[1]
                        if fut is not None and not fut.done():
                            fut.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lost(exc)

    def _refused(self, exc: ResponseError) -> None:
        if self._expect:
            _, fut = self._expect.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(TransportError(f"redis refused to subscribe: {exc}"))
        else:
            log.warning("redis error on the subscriber connection: %s", exc)

    async def _read_publisher(
        self, conn: Connection, lost: Callable[[BaseException], None]
    ) -> None:
        read = _reader(conn)
        try:
            while True:
                try:
                    reply = await read()  # the receiver count of each PUBLISH
                except ResponseError as exc:
                    reply = exc
                if isinstance(reply, ResponseError) and not self._warned_publish:
                    self._warned_publish = True
                    log.warning("redis refused a PUBLISH: %s", reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lost(exc)

    # -- commands ----------------------------------------------------------------------------

    def _subscriber(self) -> _Pipe:
        sub = self.sub
        if sub is None:
            raise TransportError(f"not connected to {self.options.address}")
        return sub

    def subscribe(
        self, channels: Sequence[bytes], *, pattern: bool = False
    ) -> asyncio.Future[None]:
        """Send one (P)SUBSCRIBE; the future resolves when Redis confirmed every channel."""
        sub = self._subscriber()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expect.append([len(channels), fut])
        sub.write(_command(b"PSUBSCRIBE" if pattern else b"SUBSCRIBE", *channels))
        return fut

    def unsubscribe(self, channels: Sequence[bytes], *, pattern: bool = False) -> None:
        sub = self.sub
        if sub is None or not channels:
            return
        self._expect.append([len(channels), None])
        sub.write(_command(b"PUNSUBSCRIBE" if pattern else b"UNSUBSCRIBE", *channels))

    def publisher(self) -> _Pipe:
        pub = self.pub
        if pub is None or not self.up:
            raise TransportError(f"not connected to {self.options.address}")
        return pub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await self._reconnecting
        pub = self.pub
        if pub is not None and self.up:  # let what was written leave first
            with contextlib.suppress(TransportError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pub.flushed()), 2.0)
        self._teardown(TransportError("redis transport closed"))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _reader(conn: Connection) -> Callable[[], Awaitable[Any]]:
    """How to read one response: the connection's parser directly when it is redis-py's
    usual one (RESP2), skipping ``Connection.read_response``'s per-call wrapper (about a
    tenth of the CPU of a request); errors then come back as ``ResponseError`` values."""
    read = getattr(getattr(conn, "_parser", None), "read_response", None)
    if read is None or getattr(conn, "protocol", None) != 2:
        return conn.read_response
    return cast(Callable[[], Awaitable[Any]], read)


def _open(conn: Connection) -> Awaitable[None]:
    connect: Callable[[], Awaitable[None]] = conn.connect  # untyped in redis-py
    return connect()


async def _disconnect(conns: Sequence[Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)


def _failed(fut: asyncio.Future[None]) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None)


def _check_size(body: bytes, options: RedisOptions) -> bytes:
    if len(body) > options.max_message_bytes:
        raise ProtocolError(
            f"message of {len(body)} bytes exceeds max_message_bytes={options.max_message_bytes}"
        )
    return body


# -- client -------------------------------------------------------------------------------


class _ReplyChannel:
    """One ``<route>.reply`` subscription, shared by the pending requests on that route."""

    __slots__ = ("channel", "idle_since", "live", "owner", "ready", "refs", "session")

    def __init__(self, owner: RedisClientTransport, channel: bytes) -> None:
        self.owner = owner
        self.channel = channel
        self.refs = 0
        self.ready: asyncio.Future[None] | None = None  # the SUBSCRIBE's confirmation
        self.session = -1  # the link session ``ready`` belongs to
        self.live = -1  # the link session in which the subscription is confirmed
        self.idle_since = 0.0

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.idle_since = time.monotonic()
            self.owner._schedule_sweep()


class RedisClientTransport:
    """Requests and events over one publisher and one subscriber connection."""

    features = FEATURES

    def __init__(self, options: RedisOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._link: _Link | None = None
        self._replies: dict[str, _ReplyChannel] = {}
        self._channels: dict[str, bytes] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        link = _Link(self.options, self._on_message, self._restore, self._lost, sink.on_status)
        await link.connect()
        self._link = link

    def _on_message(self, channel: bytes, body: bytes, pattern: bytes | None) -> None:
        sink = self._sink
        if sink is None:
            return None
        if len(body) > self.options.max_message_bytes:
            log.warning("dropping a reply of %d bytes: over max_message_bytes", len(body))
            return None
        try:
            reply = decode_reply(self._serializer, body)
        except ProtocolError as exc:
            log.warning("dropping an undecodable reply on %r: %s", channel, exc)
            return None
        sink.on_reply(reply)
        return None

    async def _restore(self, link: _Link) -> None:
        """After a reconnection: subscribe again the reply channels still in use."""
        active = []
        for route, entry in list(self._replies.items()):
            if entry.refs > 0:
                active.append(entry)
            else:
                del self._replies[route]
        if active:
            ready = link.subscribe([entry.channel for entry in active])
            for entry in active:
                entry.ready, entry.session = ready, link.session
            await ready
            for entry in active:
                entry.live = link.session

    def _lost(self, exc: TransportError) -> None:
        if self._sink is not None:
            self._sink.on_connection_lost(exc)

    def _channel(self, route: str) -> bytes:
        channel = self._channels.get(route)
        if channel is None:
            if len(self._channels) > 10_000:
                self._channels.clear()
            channel = self._channels[route] = route.encode()
        return channel

    async def request(self, request: Request) -> Release:
        link = self._link
        if link is None:
            raise TransportError("redis client is closed")
        body = _check_size(
            encode_request(self._serializer, request, metadata=self.options.send_metadata),
            self.options,
        )
        if not link.up:
            deadline = request.deadline
            await link.wait_up(None if deadline is None else deadline - time.time())
        route = request.route
        entry = self._replies.get(route)
        if entry is None:
            entry = self._replies[route] = _ReplyChannel(self, (route + ".reply").encode())
        entry.refs += 1
        try:
            if entry.live != link.session:
                await self._subscribe(entry, link)
            pipe = link.publisher()
        except BaseException:
            entry.release()
            raise
        pipe.publish(self._channel(route), body)
        if pipe.backlogged:
            await asyncio.shield(pipe.flushed())
        return entry.release

    async def _subscribe(self, entry: _ReplyChannel, link: _Link) -> None:
        ready = entry.ready
        if ready is None or entry.session != link.session or _failed(ready):
            ready = entry.ready = link.subscribe([entry.channel])
            entry.session = link.session
        await asyncio.shield(ready)  # shared: one caller's cancel must not cancel it
        if entry.ready is ready and entry.session == link.session:
            entry.live = link.session

    def _schedule_sweep(self) -> None:
        if self._sweep is None and self._link is not None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.options.reply_linger, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Unsubscribe reply channels idle for ``reply_linger`` seconds, in one command."""
        self._sweep = None
        now = time.monotonic()
        linger = self.options.reply_linger
        link = self._link
        expired: list[bytes] = []
        next_due: float | None = None
        for route, entry in list(self._replies.items()):
            if entry.refs:
                continue
            due = entry.idle_since + linger
            if due <= now:
                del self._replies[route]
                if link is not None and entry.session == link.session and entry.ready is not None:
                    expired.append(entry.channel)
            elif next_due is None or due < next_due:
                next_due = due
        if expired and link is not None:
            link.unsubscribe(expired)
        if next_due is not None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(next_due - now, self._sweep_idle)

    async def publish_event(self, event: Event) -> None:
        link = self._link
        if link is None:
            raise TransportError("redis client is closed")
        body = _check_size(
            encode_event(self._serializer, event, metadata=self.options.send_metadata),
            self.options,
        )
        if not link.up:
            await link.wait_up()
        pipe = link.publisher()
        pipe.publish(self._channel(event.route), body)  # sent with this loop iteration's batch
        if pipe.backlogged:
            await asyncio.shield(pipe.flushed())

    async def close(self) -> None:
        link, self._link = self._link, None
        self._sink = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._replies.clear()
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        return f"RedisClientTransport({self.options.address})"


# -- server -------------------------------------------------------------------------------


class RedisContext(Context):
    """Context of a Redis message.

    ``channel`` is the channel the message arrived on (NestJS ``RedisContext.getChannel()``);
    with ``wildcards`` ``pattern`` is the subscribed pattern that matched it. ``headers`` is
    the packet's NestJS v12 ``metadata`` (``RedisContext.getMetadata()``, ``None`` without
    it); ``deadline`` comes from its ``x-polybus-deadline`` entry.
    """

    __slots__ = ("_reply_channel", "_server", "channel")
    transport_name = "redis"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        channel: str,
        reply_channel: bytes,
        server: RedisServerTransport,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(pattern, data, id, metadata, parse_deadline(metadata))
        self.channel = channel
        self._reply_channel = reply_channel
        self._server = server

    async def send_reply(self, reply: Reply) -> None:
        server = self._server
        body = _check_size(encode_reply(server._serializer, reply), server.options)
        link = server._link
        if link is None or not link.up:
            return  # the caller was failed when the connection dropped
        pipe = link.publisher()
        pipe.publish(self._reply_channel, body)
        if pipe.backlogged:
            await asyncio.shield(pipe.flushed())


class RedisServerTransport:
    """Receives every route on one subscriber connection; replies on one publisher."""

    features = FEATURES

    def __init__(self, options: RedisOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: MessageSink | None = None
        self._link: _Link | None = None
        self._routes: dict[bytes, tuple[str, bytes]] = {}  # channel → (route, reply channel)

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._routes = {
            spec.route.encode(): (spec.route, (spec.route + ".reply").encode()) for spec in routes
        }
        self._sink = sink
        link = _Link(self.options, self._on_message, self._restore)
        try:
            await link.connect()
        except BaseException:
            self._sink = None
            raise
        self._link = link

    async def _restore(self, link: _Link) -> None:
        if self._routes and self._sink is not None:
            await link.subscribe(list(self._routes), pattern=self.options.wildcards)

    def _on_message(
        self, channel: bytes, body: bytes, pattern: bytes | None
    ) -> Awaitable[None] | None:
        sink = self._sink
        if sink is None:
            return None
        target = self._routes.get(channel if pattern is None else pattern)
        if target is None:
            return None
        route, reply_channel = target
        name = route
        if pattern is not None:
            name = channel.decode("utf-8", "replace")
            reply_channel = channel + b".reply"
        if len(body) > self.options.max_message_bytes:
            log.warning(
                "dropping a message of %d bytes on %r: over max_message_bytes", len(body), name
            )
            return None
        try:
            incoming = decode_incoming(self._serializer, body, channel=route)
        except ProtocolError as exc:
            log.warning("dropping a malformed message on %r: %s", name, exc)
            return None
        return sink(
            RedisContext(
                incoming.pattern,
                incoming.data,
                incoming.id,
                name,
                reply_channel,
                self,
                incoming.metadata,
            )
        )

    async def stop(self) -> None:
        self._sink = None
        link = self._link
        if link is not None and link.up:
            link.unsubscribe(list(self._routes), pattern=self.options.wildcards)

    async def close(self) -> None:
        self._sink = None
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        return f"RedisServerTransport({self.options.address})"


PLUGIN = TransportPlugin("REDIS", RedisOptions, RedisClientTransport, RedisServerTransport)
