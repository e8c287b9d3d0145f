"""RabbitMQ transport (``amqp://`` / ``amqps://``), wire-compatible with NestJS ``Transport.RMQ``.

PROTOCOL.md §5: one durable work queue per service carries every request and event;
requests go to the default exchange with routing key = the queue, ``correlation_id`` = the
request id and ``reply_to = amq.rabbitmq.reply-to`` (direct reply-to); replies come back
without ``id`` in the body and are matched by ``correlation_id``.

Built on aio-pika's robust connection (reconnects with backoff and reopens the channel;
the queue declaration and our consumers are restored on the new channel). The hot path
talks to aio-pika's underlying aiormq channel: publishes are marshalled with pamqp and
written through the channel's connection write queue, every publish made in one
event-loop iteration in one write (corking), without publisher confirms unless the
``publisher_confirms`` option asks for them; consumers are plain aiormq consumers that get
the raw ``DeliveredMessage`` (the aio-pika ``IncomingMessage`` is built only if a handler
asks for ``context.message``).

URL: ``amqp://user:pass@host:5672/vhost?queue=orders&prefetch_count=50&no_ack=false``;
``amqps://`` takes ``ca_file``/``cert_file``/``key_file`` (also ``ca``/``cert``/``key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from polybus.abc import (
    ConnectionStatus,
    Context,
    Features,
    MessageSink,
    Release,
    ReplySink,
    RouteSpec,
)
from polybus.config import TransportOptions, TransportPlugin, redact_url, split_url, url_query
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
)
from polybus.serializers import Serializer

if TYPE_CHECKING:
    import aio_pika
    import aio_pika.abc
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic

__all__ = ["RmqClientTransport", "RmqContext", "RmqOptions", "RmqServerTransport"]

log = logging.getLogger("polybus.rabbitmq")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DEADLINE_HEADER = "x-polybus-deadline"
DEFAULT_SERVER_PREFETCH = 100
"""Server prefetch when none is given; it only matters with ``no_ack=False`` (RabbitMQ
ignores prefetch for auto-ack consumers). NestJS uses 0 (unlimited)."""

FEATURES = Features(
    name="rabbitmq",
    unknown_pattern="error",
    competing_consumers=True,
    durable_events=True,
    headers=True,
    isolation_option="queue",
    restart_command=("sh", "-c", "rabbitmqctl stop_app && rabbitmqctl start_app"),
)

# amqplib's assertQueue shorthands → queue arguments (they win over ``arguments``).
_QUEUE_ARGUMENTS = {
    "message_ttl": "x-message-ttl",
    "expires": "x-expires",
    "dead_letter_exchange": "x-dead-letter-exchange",
    "dead_letter_routing_key": "x-dead-letter-routing-key",
    "max_length": "x-max-length",
    "max_priority": "x-max-priority",
    "overflow": "x-overflow",
    "queue_mode": "x-queue-mode",
}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


# -- options ------------------------------------------------------------------------------


_INTS = ("prefetch_count", "heartbeat", "max_message_bytes")
_FLOATS = ("reconnect_interval", "connect_timeout")
_BOOLS = ("no_ack", "persistent", "no_assert", "is_global_prefetch_count", "publisher_confirms")
_URL_ALIASES = {
    "ca": "ca_file",
    "cafile": "ca_file",
    "cert": "cert_file",
    "certfile": "cert_file",
    "key": "key_file",
    "keyfile": "key_file",
    "name": "connection_name",
}


@dataclass
class RmqOptions(TransportOptions):
    """Options of both halves. ``urls`` may hold credentials: never shown in reprs."""

    urls: list[str] = field(default_factory=lambda: ["amqp://localhost:5672/"], repr=False)
    queue: str = ""
    queue_options: dict[str, Any] = field(default_factory=dict)
    """As NestJS ``queueOptions``: ``durable`` (default True), ``exclusive``, ``auto_delete``,
    ``arguments`` and amqplib's shorthands (``message_ttl``, ``max_priority``...)."""
    no_assert: bool = False
    prefetch_count: int | None = None
    """``basic.qos`` prefetch; default 0 for clients, 100 for servers."""
    is_global_prefetch_count: bool = False
    no_ack: bool = True
    """Server: consume with auto-ack (NestJS default). ``False``: ack after the handler
    succeeded, reject without requeue when it failed or had no handler."""
    persistent: bool = False
    headers: dict[str, str] | None = None
    reply_queue: str = DIRECT_REPLY_TO
    publisher_confirms: bool = False
    """Wait for the broker's confirm on every publish (slower; off like NestJS)."""
    heartbeat: int = 5
    reconnect_interval: float = 1.0
    connect_timeout: float = 10.0
    connection_name: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> RmqOptions:
        parts = split_url(url, ("amqp", "amqps"))
        overrides: dict[str, Any] = {}
        for key, value in url_query(parts).items():
            overrides[_URL_ALIASES.get(key, _snake(key))] = value
        options = cls(urls=[parts._replace(query="", fragment="").geturl()])
        return options.with_overrides(_coerce(overrides))

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> RmqOptions:
        options = dict(options)
        urls = options.pop("urls", None)
        socket = options.pop("socketOptions", None) or options.pop("socket_options", None) or {}
        for unsupported in (
            "exchange",
            "exchangeType",
            "routingKey",
            "wildcards",
            "exchangeArguments",
        ):
            if options.get(unsupported):
                raise ConfigError(f"the RabbitMQ option {unsupported!r} is not supported yet")
            options.pop(unsupported, None)
        result = cls().with_overrides(options)
        if urls is not None:
            if isinstance(urls, str):
                urls = [urls]
            if not urls or not all(isinstance(u, str) for u in urls):
                raise ConfigError("RabbitMQ urls must be a list of amqp:// URL strings")
            for u in urls:
                split_url(u, ("amqp", "amqps"))
            result.urls = list(urls)
        names = {
            "heartbeatIntervalInSeconds": "heartbeat",
            "reconnectTimeInSeconds": "reconnect_interval",
        }
        socket_options: dict[str, Any] = dict(socket)
        result = result.with_overrides({names.get(k, k): v for k, v in socket_options.items()})
        return result

    def declare_arguments(self) -> tuple[bool, bool, bool, dict[str, Any] | None]:
        """``(durable, exclusive, auto_delete, arguments)`` as amqplib's assertQueue does."""
        flags = {"durable": True, "exclusive": False, "auto_delete": False}
        arguments: dict[str, Any] = {}
        shorthand: dict[str, Any] = {}
        for key, value in self.queue_options.items():
            name = _snake(key)
            if name in flags:
                flags[name] = bool(value)
            elif name == "arguments":
                arguments.update(value or {})
            elif name in _QUEUE_ARGUMENTS:
                if value is not None:
                    shorthand[_QUEUE_ARGUMENTS[name]] = value
            else:
                raise ConfigError(f"unknown RabbitMQ queue option {key!r}")
        arguments.update(shorthand)
        return flags["durable"], flags["exclusive"], flags["auto_delete"], arguments or None

    def client_ssl(self) -> ssl.SSLContext | None:
        if self.ssl_context is not None:
            return self.ssl_context
        if not (self.ca_file or self.cert_file):
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def connection_url(self, url: str) -> str:
        """The URL handed to aio-pika: ours plus the aiormq query parameters."""
        query: dict[str, str] = {"heartbeat": str(self.heartbeat)}
        if self.connection_name:
            query["name"] = self.connection_name
        return f"{url}?{urlencode(query)}"

    def validate(self) -> None:
        if not self.queue:
            raise ConfigError("the RabbitMQ transport needs a queue (URL ?queue=... or queue=...)")
        self.declare_arguments()


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key in _INTS:
                value = int(value)
            elif key in _FLOATS:
                value = float(value)
            elif key in _BOOLS:
                text = str(value).lower()
                if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = text in ("1", "true", "yes", "on")
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value {value!r} for RabbitMQ option {key}") from None
        out[key] = value
    return out


def _str_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    if not raw:
        return {}
    return {
        key: value.decode("utf-8", "replace")
        if isinstance(value, (bytes, bytearray))
        else str(value)
        for key, value in raw.items()
    }


def _transport_error(what: str, exc: BaseException) -> TransportError:
    return TransportError(f"RabbitMQ {what} failed: {type(exc).__name__}: {exc}")


# -- AMQP content header, encoded by hand (pamqp's generic encoder is the hot spot) -------

_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_FIXED = struct.Struct(">HHQH")
_FRAME_END = b"\xce"
_SETTLE_FRAME = struct.Struct(">BHIHHQB")  # method frame: Basic.Ack (60, 80) / Basic.Nack (60, 120)


def _short(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ProtocolError(f"AMQP short string over 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


class _Props:
    """The basic properties polybus sends, and their content-header frame."""

    __slots__ = ("correlation_id", "delivery_mode", "expiration", "headers", "priority", "reply_to")

    def __init__(
        self,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        expiration: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.expiration = expiration
        self.headers = headers

    def header_frame(self, channel: int, body_size: int) -> bytes:
        """The content-header frame (AMQP 0-9-1 §4.2.6.1, property flags from bit 15 down)."""
        flags = 0
        parts: list[bytes] = []
        if self.headers:
            from pamqp.encode import field_table

            flags |= 0x2000
            parts.append(field_table(self.headers))
        if self.delivery_mode is not None:
            flags |= 0x1000
            parts.append(bytes((self.delivery_mode,)))
        if self.priority is not None:
            flags |= 0x0800
            parts.append(bytes((self.priority,)))
        if self.correlation_id is not None:
            flags |= 0x0400
            parts.append(_short(self.correlation_id))
        if self.reply_to is not None:
            flags |= 0x0200
            parts.append(_short(self.reply_to))
        if self.expiration is not None:
            flags |= 0x0100
            parts.append(_short(self.expiration))
        payload = _HEADER_FIXED.pack(60, 0, body_size, flags) + b"".join(parts)
        return _FRAME_HEAD.pack(2, channel, len(payload)) + payload + _FRAME_END

    def to_pamqp(self) -> Basic.Properties:
        from pamqp.commands import Basic

        return Basic.Properties(
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
            delivery_mode=self.delivery_mode,
            priority=self.priority,
            expiration=self.expiration,
            headers=self.headers,
        )


# -- the link: one robust connection, one channel, a corked publisher ---------------------


class _Link:
    """A robust connection with one channel (``channel``: aio-pika; ``raw``: aiormq).

    ``on_lost(exc)`` runs when the channel closes without us asking (connection drop,
    channel error); ``on_restored(raw)`` after the channel was reopened (queue declared,
    qos set): consumers are re-registered there before the link is marked ready again.
    """

    def __init__(
        self,
        options: RmqOptions,
        prefetch: int,
        on_lost: Callable[[BaseException | None], None],
        on_restored: Callable[[Any], Awaitable[None]],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self._prefetch = prefetch
        self._on_lost = on_lost
        self._on_restored = on_restored
        self._on_ready = on_ready
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self.raw: Any = None
        self.ready = asyncio.Event()
        self.closing = False
        self._out: list[bytes] = []
        self._out_drain: asyncio.Future[None] | None = None
        self._draining: set[asyncio.Future[None]] = set()
        self._method_cache: dict[str, bytes] = {}
        self._url = options.urls[0]

    @property
    def url(self) -> str:
        return redact_url(self._url)

    async def open(self) -> None:
        import aio_pika

        options = self.options
        errors: list[str] = []
        for url in options.urls:
            try:
                self.connection = await asyncio.wait_for(
                    aio_pika.connect_robust(
                        options.connection_url(url),
                        ssl_context=options.client_ssl(),
                        reconnect_interval=options.reconnect_interval,
                        timeout=options.connect_timeout,
                    ),
                    options.connect_timeout + 1,
                )
            except (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, asyncio.TimeoutError) as exc:
                errors.append(f"{redact_url(url)}: {type(exc).__name__}: {exc}")
                continue
            self._url = url
            break
        else:
            raise TransportError(f"cannot connect to RabbitMQ: {'; '.join(errors)}")
        try:
            channel = self.channel = self.connection.channel(
                publisher_confirms=options.publisher_confirms
            )
            await channel.initialize()
            await channel.set_qos(
                prefetch_count=self._prefetch, global_=options.is_global_prefetch_count
            )
            if not options.no_assert:
                durable, exclusive, auto_delete, arguments = options.declare_arguments()
                await channel.declare_queue(
                    options.queue,
                    durable=durable,
                    exclusive=exclusive,
                    auto_delete=auto_delete,
                    arguments=arguments,
                )
            self.raw = await channel.get_underlay_channel()
            await self._on_restored(self.raw)
        except (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, asyncio.TimeoutError) as exc:
            await self.close()
            raise _transport_error(f"setup of queue {options.queue!r} on {self.url}", exc) from exc
        channel.close_callbacks.add(self._channel_closed)
        channel.reopen_callbacks.add(self._channel_reopened)
        self.ready.set()

    def _channel_closed(self, _channel: Any, exc: BaseException | None) -> None:
        was_ready = self.ready.is_set()
        self.ready.clear()
        self._out.clear()
        self._fail_drains()
        if was_ready and not self.closing:
            self._on_lost(exc)

    def _lost_error(self) -> TransportError:
        if self.closing:
            return TransportError("RabbitMQ transport closed")
        return TransportError(f"RabbitMQ connection to {self.url} was lost")

    def _fail_drains(self) -> None:
        pending = list(self._draining)
        if self._out_drain is not None:
            pending.append(self._out_drain)
            self._out_drain = None
        self._draining.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(self._lost_error())

    async def _channel_reopened(self, channel: Any) -> None:
        if self.closing:
            return
        try:
            self.raw = await channel.get_underlay_channel()
            self._method_cache.clear()
            await self._on_restored(self.raw)
        except Exception as exc:
            log.warning("RabbitMQ channel reopened on %s but setup failed: %s", self.url, exc)
            return
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    async def wait_ready(self) -> Any:
        """The aiormq channel, waiting up to ``connect_timeout`` while reconnecting."""
        if self.closing:
            raise TransportError("RabbitMQ transport is closed")
        try:
            await asyncio.wait_for(self.ready.wait(), self.options.connect_timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"RabbitMQ connection to {self.url} is down") from None
        if self.closing:
            raise TransportError("RabbitMQ transport is closed")
        return self.raw

    # -- publishing ----------------------------------------------------------------------

    def publish(self, routing_key: str, body: bytes, props: _Props) -> None:
        """Queue one publish to the default exchange; it leaves with this iteration's batch."""
        raw = self.raw
        if raw.is_closed:
            raise self._lost_error()
        number: int = raw.number
        method = self._method_cache.get(routing_key)
        if method is None:
            method = self._method_frame(routing_key, number)
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(method)
        out.append(props.header_frame(number, len(body)))
        size: int = raw.max_content_size
        if len(body) <= size:
            if body:
                out.append(_FRAME_HEAD.pack(3, number, len(body)))
                out.append(body)
                out.append(_FRAME_END)
        else:
            view = memoryview(body)
            for start in range(0, len(body), size):
                chunk = view[start : start + size]
                out.append(_FRAME_HEAD.pack(3, number, len(chunk)))
                out.append(bytes(chunk))
                out.append(_FRAME_END)

    def settle(self, raw: Any, tag: int, ok: bool, requeue: bool = False) -> bool:
        """Queue an ack (``ok``) or a nack of a delivery on ``raw``; False if it is gone."""
        if raw is not self.raw or raw.is_closed:
            return False  # the broker requeued it when that channel closed
        frame = _SETTLE_FRAME.pack(
            1, raw.number, 13, 60, 80 if ok else 120, tag, 2 if requeue and not ok else 0
        )
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(frame)
        out.append(_FRAME_END)
        return True

    def _method_frame(self, routing_key: str, number: int) -> bytes:
        from pamqp.commands import Basic
        from pamqp.frame import marshal

        if len(self._method_cache) > 1024:
            self._method_cache.clear()
        method = marshal(Basic.Publish(exchange="", routing_key=routing_key), number)
        self._method_cache[routing_key] = method
        return method

    async def drain(self) -> None:
        """Wait until the current batch was written to the socket."""
        if not self._out:
            return
        fut = self._out_drain
        if fut is None:
            fut = self._out_drain = asyncio.get_running_loop().create_future()
        await fut

    def _flush(self) -> None:
        from aiormq.abc import ChannelFrame

        out, self._out = self._out, []
        drain, self._out_drain = self._out_drain, None
        raw = self.raw
        if not out or raw is None or raw.is_closed:
            if drain is not None and not drain.done():
                drain.set_exception(self._lost_error())
            return
        if drain is not None:  # failed by _channel_closed if the writer never gets to it
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
        frame = ChannelFrame(payload=b"".join(out), should_close=False, drain_future=drain)
        queue = raw.write_queue
        try:
            queue.put_nowait(frame)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(queue.put(frame))

    async def publish_confirmed(self, routing_key: str, body: bytes, props: _Props) -> None:
        """The aiormq path: waits for the broker's confirm when the channel confirms."""
        await self.raw.basic_publish(
            body, routing_key=routing_key, properties=props.to_pamqp(), mandatory=False
        )

    # -- cleanup -------------------------------------------------------------------------

    async def delete_queue(self) -> None:
        import aio_pika

        channel = self.channel
        if channel is None or channel.is_closed or not self.ready.is_set():
            connection = await aio_pika.connect(
                self.options.connection_url(self._url),
                ssl_context=self.options.client_ssl(),
                timeout=self.options.connect_timeout,
            )
            try:
                temp = await connection.channel()
                await temp.queue_delete(self.options.queue)
            finally:
                await connection.close()
            return
        await channel.queue_delete(self.options.queue)

    async def close(self) -> None:
        self.closing = True
        self.ready.clear()
        if self._out and self.raw is not None and not self.raw.is_closed:
            self._flush()
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
        self._fail_drains()


def _too_big(body: bytes, limit: int) -> ProtocolError:
    return ProtocolError(f"message of {len(body)} bytes exceeds max_message_bytes={limit}")


# -- client -------------------------------------------------------------------------------


class RmqClientTransport:
    """Publishes to the service queue; replies arrive by direct reply-to on the same channel."""

    features = FEATURES

    def __init__(self, options: RmqOptions, serializer: Serializer) -> None:
        options.validate()
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._link: _Link | None = None
        self._base_headers: dict[str, Any] = dict(options.headers or {})
        self._persistent = options.persistent
        self._reply_to = options.reply_queue

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        link = _Link(
            self.options,
            self.options.prefetch_count or 0,
            self._lost,
            self._consume_replies,
            self._reconnected,
        )
        await link.open()
        self._link = link

    async def _consume_replies(self, raw: Any) -> None:
        await raw.basic_consume(self.options.reply_queue, self._on_reply, no_ack=True)

    def _lost(self, exc: BaseException | None) -> None:
        sink = self._sink
        if sink is None:
            return
        sink.on_status(ConnectionStatus.RECONNECTING)
        reason = f": {exc}" if exc else ""
        sink.on_connection_lost(TransportError(f"RabbitMQ channel closed{reason}"))

    def _reconnected(self) -> None:
        if self._sink is not None:
            self._sink.on_status(ConnectionStatus.CONNECTED)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        sink = self._sink
        if sink is None:
            return
        body = message.body
        if len(body) > self.options.max_message_bytes:
            log.warning("dropping reply of %d bytes: over max_message_bytes", len(body))
            return
        try:
            reply = decode_reply(self._serializer, body)
        except ProtocolError as exc:
            log.warning("dropping undecodable reply: %s", exc)
            return
        cid = message.header.properties.correlation_id
        if cid is not None:
            reply.id = cid
        sink.on_reply(reply)

    def _props(
        self,
        record: Any,
        headers: dict[str, str] | None,
        deadline: float | None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> _Props:
        """Properties of one publish: client headers < record headers < the deadline."""
        merged: dict[str, Any] | None = self._base_headers
        if headers or deadline is not None:
            merged = {**self._base_headers, **(headers or {})}
            if deadline is not None:
                merged[DEADLINE_HEADER] = f"{deadline:.3f}"
        persistent = self._persistent
        priority = expiration = None
        if record is not None:
            if record.persistent is not None:
                persistent = record.persistent
            priority = record.priority
            if record.expiration_ms is not None:
                expiration = str(int(record.expiration_ms))
        return _Props(
            correlation_id, reply_to, 2 if persistent else 1, priority, expiration, merged or None
        )

    def _checked(self, body: bytes) -> bytes:
        if len(body) > self.options.max_message_bytes:
            raise _too_big(body, self.options.max_message_bytes)
        return body

    async def request(self, request: Request) -> Release:
        link = self._link
        if link is None:
            raise TransportError("RabbitMQ client is not connected")
        body = self._checked(encode_request(self._serializer, request))
        if not link.ready.is_set():
            await link.wait_ready()
        props = self._props(
            request.record, request.headers, request.deadline, request.id, self._reply_to
        )
        if self.options.publisher_confirms:
            await self._confirmed(link, body, props)
        else:
            link.publish(self.options.queue, body, props)
        return _noop

    async def publish_event(self, event: Event) -> None:
        link = self._link
        if link is None:
            raise TransportError("RabbitMQ client is not connected")
        body = self._checked(encode_event(self._serializer, event))
        if not link.ready.is_set():
            await link.wait_ready()
        props = self._props(event.record, event.headers, None)
        if self.options.publisher_confirms:
            await self._confirmed(link, body, props)
            return
        link.publish(self.options.queue, body, props)
        await link.drain()

    async def _confirmed(self, link: _Link, body: bytes, props: _Props) -> None:
        import aio_pika

        try:
            await link.publish_confirmed(self.options.queue, body, props)
        except (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, asyncio.TimeoutError) as exc:
            raise _transport_error("publish", exc) from exc

    async def close(self) -> None:
        link, self._link = self._link, None
        self._sink = None
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        url = self._link.url if self._link else redact_url(self.options.urls[0])
        return f"RmqClientTransport({url} queue={self.options.queue!r})"


def _noop() -> None:
    pass


# -- server -------------------------------------------------------------------------------


class RmqContext(Context):
    """Context of a RabbitMQ message.

    - ``delivered``: the raw aiormq ``DeliveredMessage``; ``properties``: its AMQP properties
    - ``message``: the aio-pika ``IncomingMessage`` (built on first access)
    - ``channel``: the aio-pika channel the message arrived on
    - ``headers``: the AMQP headers as strings; ``reply_to``, ``correlation_id``
    - ``ack()`` / ``nack(requeue=False)``: settle the message yourself (only with the server
      option ``no_ack=False``; no-ops otherwise). Without them, the server acks once the
      handler succeeded and rejects (no requeue) when it failed.
    """

    __slots__ = ("_message", "_server", "_settled", "correlation_id", "delivered", "reply_to")
    transport_name = "rmq"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        headers: dict[str, str] | None,
        deadline: float | None,
        delivered: DeliveredMessage,
        server: RmqServerTransport,
    ) -> None:
        super().__init__(pattern, data, id, headers, deadline)
        self.delivered = delivered
        props = delivered.header.properties
        self.reply_to: str | None = props.reply_to
        self.correlation_id: str | None = props.correlation_id
        self._server = server
        self._message: aio_pika.abc.AbstractIncomingMessage | None = None
        self._settled = server.options.no_ack

    @property
    def properties(self) -> Basic.Properties:
        return self.delivered.header.properties

    @property
    def message(self) -> aio_pika.abc.AbstractIncomingMessage:
        if self._message is None:
            from aio_pika import IncomingMessage

            self._message = IncomingMessage(self.delivered, no_ack=self._server.options.no_ack)
        return self._message

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel | None:
        return self._server._link.channel if self._server._link else None

    def _claim(self) -> bool:
        if self._settled or (self._message is not None and self._message.processed):
            return False
        self._settled = True
        return not self.delivered.channel.is_closed

    async def ack(self) -> None:
        if self._claim():
            await self._settle(True, False)

    async def nack(self, requeue: bool = False) -> None:
        if self._claim():
            await self._settle(False, requeue)

    async def _settle(self, ok: bool, requeue: bool) -> None:
        link = self._server._link
        delivered = self.delivered
        if link is not None:
            link.settle(delivered.channel, delivered.delivery_tag or 0, ok, requeue)

    async def settle(self, ok: bool) -> None:
        if self._claim():
            await self._settle(ok, False)

    async def send_reply(self, reply: Reply) -> None:
        reply_to = self.reply_to
        if reply_to is None:
            return
        server = self._server
        body = encode_reply(server._serializer, reply, with_id=False)
        if len(body) > server.options.max_message_bytes:
            raise _too_big(body, server.options.max_message_bytes)
        await server._reply(reply_to, self.correlation_id, body)


class RmqServerTransport:
    """Consumes the service queue; replies go to each request's ``reply_to``."""

    features = FEATURES

    def __init__(self, options: RmqOptions, serializer: Serializer) -> None:
        options.validate()
        self.options = options
        self._serializer = serializer
        self._sink: MessageSink | None = None
        self._link: _Link | None = None
        self._consumer_tag: str | None = None
        self._stopping = False
        self._last_link: _Link | None = None

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._sink = sink
        self._stopping = False
        prefetch = self.options.prefetch_count
        link = _Link(
            self.options,
            DEFAULT_SERVER_PREFETCH if prefetch is None else prefetch,
            self._lost,
            self._consume,
        )
        self._link = link
        try:
            await link.open()
        except BaseException:
            self._link = None
            raise

    async def _consume(self, raw: Any) -> None:
        if self._stopping:
            return
        ok = await raw.basic_consume(
            self.options.queue, self._on_message, no_ack=self.options.no_ack
        )
        self._consumer_tag = ok.consumer_tag
        raw.on_consumer_cancel_callbacks.add(self._cancelled)

    def _cancelled(self, frame: Any) -> None:
        if not self._stopping:
            log.warning(
                "RabbitMQ cancelled the consumer of %r (queue deleted?)", self.options.queue
            )

    def _lost(self, exc: BaseException | None) -> None:
        if not self._stopping:
            log.warning("RabbitMQ channel closed (%s); reconnecting", exc)

    async def _on_message(self, message: DeliveredMessage) -> None:
        sink = self._sink
        if sink is None or self._stopping:
            return  # not acked: the broker redelivers it to another consumer
        body = message.body
        options = self.options
        if len(body) > options.max_message_bytes:
            log.warning("dropping message of %d bytes: over max_message_bytes", len(body))
            await self._reject(message)
            return
        try:
            incoming = decode_incoming(self._serializer, body)
        except ProtocolError as exc:
            log.warning("dropping malformed message from queue %r: %s", options.queue, exc)
            await self._reject(message)
            return
        raw_headers = message.header.properties.headers
        headers: dict[str, str] | None = None
        deadline = None
        if raw_headers:
            headers = _str_headers(raw_headers)
            text = headers.get(DEADLINE_HEADER)
            if text is not None:
                with contextlib.suppress(ValueError):
                    deadline = float(text)
        await sink(
            RmqContext(
                incoming.pattern, incoming.data, incoming.id, headers, deadline, message, self
            )
        )

    async def _reject(self, message: DeliveredMessage) -> None:
        if not self.options.no_ack and self._link is not None:
            self._link.settle(message.channel, message.delivery_tag or 0, False)

    async def _reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        link = self._link
        if link is None or not link.ready.is_set():
            log.debug("dropping a reply: the RabbitMQ channel is down")
            return
        try:
            link.publish(reply_to, body, _Props(correlation_id))
        except TransportError as exc:  # the caller's request failed with the connection
            log.debug("dropping a reply: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
        link, tag = self._link, self._consumer_tag
        self._consumer_tag = None
        if link is None or tag is None or not link.ready.is_set():
            return
        with contextlib.suppress(Exception):
            await link.raw.basic_cancel(tag)

    async def close(self) -> None:
        await self.stop()
        link, self._link = self._link, None
        self._sink = None
        if link is not None:
            self._last_link = link
            await link.close()

    async def delete_resources(self) -> None:
        """Delete the service queue (and every message in it)."""
        import aio_pika

        link = self._link or self._last_link
        if link is None:
            link = _Link(self.options, 0, lambda exc: None, _no_restore)
        try:
            await link.delete_queue()
        except (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, asyncio.TimeoutError) as exc:
            raise _transport_error(f"deleting queue {self.options.queue!r}", exc) from exc

    def __repr__(self) -> str:
        url = self._link.url if self._link else redact_url(self.options.urls[0])
        return f"RmqServerTransport({url} queue={self.options.queue!r})"


async def _no_restore(raw: Any) -> None:
    pass


PLUGIN = TransportPlugin("RMQ", RmqOptions, RmqClientTransport, RmqServerTransport)
