"""NATS transport (``nats://host:4222``, ``tls://`` for TLS), wire-compatible with NestJS.

PROTOCOL.md §4: the subject is the route string; the body is the NestJS JSON envelope
(``{"pattern": raw, "data", "id"}``, events without ``id`` and without reply subject); a
server publishes every reply packet to the request's reply subject.

Client: one connection and ONE wildcard inbox subscription (``_INBOX.<nuid>.>``); each
request goes out with reply subject ``_INBOX.<nuid>.<request id>`` and replies are
correlated by that last token (a NestJS server answers whatever reply subject it got).
When nobody subscribes to the subject the NATS server answers the inbox with an empty
``503`` status message, which becomes :class:`~polybus.errors.NoRespondersError` (NestJS:
``EmptyResponseException``). Writes are buffered by nats-py and flushed once per
event-loop iteration. nats-py reconnects by itself and restores subscriptions; pending
requests fail as soon as the connection drops.

Server: one subscription per handler route (the route is what it dispatches on, wildcards
included), no queue group unless ``queue`` is set (server option, or per handler:
``@app.message_pattern(p, queue="q")``), replies without headers like NestJS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from polybus.abc import (
    ConnectionStatus,
    Context,
    Features,
    MessageSink,
    Release,
    ReplySink,
    RouteSpec,
)
from polybus.config import TransportOptions, TransportPlugin, redact_url, url_query
from polybus.errors import ConfigError, NoRespondersError, ProtocolError, TransportError
from polybus.packets import (
    DEADLINE_HEADER,
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
    "NatsClientTransport",
    "NatsContext",
    "NatsOptions",
    "NatsServerTransport",
]

log = logging.getLogger("polybus.nats")

_RESTART = (
    "start-stop-daemon --stop --oknodo --retry 5 --exec /usr/sbin/nats-server"
    " && start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server"
    " -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)

FEATURES = Features(
    name="nats",
    unknown_pattern="no_responders",
    broadcast=True,
    queue_groups=True,
    headers=True,
    restart_command=("sh", "-c", _RESTART),
    notes={
        "payload_1mib": "a 1 MiB payload plus its envelope exceeds the NATS server's default "
        "max_payload (1 MiB, raised only in the server's config file); "
        "tests/integration/test_nats.py checks fidelity up to that limit",
    },
)

_STATUS = "Status"
_NO_RESPONDERS = "503"


# -- options ------------------------------------------------------------------------------


@dataclass
class NatsOptions(TransportOptions):
    """Options of both halves. Times are in seconds (NestJS/nats.js use milliseconds:
    :meth:`from_nest` converts ``reconnectTimeWait``, ``pingInterval`` and ``timeout``)."""

    servers: list[str] = field(default_factory=lambda: ["nats://localhost:4222"])
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    """A ``.creds`` file (JWT + NKey seed) for decentralized auth."""
    tls: bool = False
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_hostname: str | None = None
    name: str | None = None
    """Connection name shown by the NATS server's monitoring."""
    queue: str | None = None
    """Server: queue group of every handler (``None``: every server gets every message)."""
    headers: dict[str, str] | None = None
    """Client: headers added to every request and event (per-message headers win)."""
    inbox_prefix: str = "_INBOX"
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 0.5
    max_reconnect_attempts: int = -1
    """Reconnect attempts after a connection was established (-1: forever, 0: none)."""
    ping_interval: float = 120.0
    max_outstanding_pings: int = 2
    pending_size: int = 8 * 1024 * 1024
    """nats-py's outgoing buffer: beyond it a publish waits for the socket."""
    flusher_queue_size: int = 1024
    pending_msgs_limit: int = 512 * 1024
    """Server: messages buffered per subscription before nats-py drops (slow consumer)."""
    pending_bytes_limit: int = 256 * 1024 * 1024
    """Server: bytes buffered per subscription before nats-py drops (0: no limit)."""
    confirm_publish: bool = False
    """Client: ``emit()`` waits for a PING/PONG round trip, so the server has the event."""
    send_deadline: bool = True
    """Client: send the request deadline (``x-polybus-deadline``): in the body's NestJS
    ``metadata``, or as a header when the request has headers anyway."""
    no_echo: bool = False

    @classmethod
    def from_url(cls, url: str) -> NatsOptions:
        """``nats://[user:pass@]host:port[,host2:port...][?option=value...]``; ``tls://``
        for TLS. A user without password is a token. Query options: any field name (e.g.
        ``queue``, ``ca_file``, ``cert_file``, ``key_file``, ``creds_file``, ``token``,
        ``name``, ``max_message_bytes``); ``ca``/``cert``/``key``/``creds`` are accepted
        as short names."""
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in ("nats", "tls"):
            raise ConfigError(f"URL {redact_url(url)!r} must use one of: nats, tls")
        parts = urlsplit(url)
        netloc = parts.netloc
        user = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            name, colon, secret = userinfo.partition(":")
            user = unquote(name) or None
            password = unquote(secret) if colon else None
        servers: list[str] = []
        for host in netloc.split(",") if netloc else ["localhost:4222"]:
            host = host.strip()
            try:
                port = urlsplit(f"{scheme}://{host}").port
            except ValueError as exc:
                raise ConfigError(f"invalid URL {redact_url(url)!r}: {exc}") from None
            if not host or host.startswith(":"):
                raise ConfigError(f"invalid URL {redact_url(url)!r}: empty host")
            servers.append(f"{scheme}://{host}" if port is not None else f"{scheme}://{host}:4222")
        options = cls(servers=servers, tls=scheme == "tls")
        if user is not None and password is None:
            options.token = user
        else:
            options.user, options.password = user, password
        names = {
            "ca": "ca_file",
            "cert": "cert_file",
            "key": "key_file",
            "creds": "creds_file",
            "pass": "password",
        }
        overrides = {
            names.get(k, k): _coerce(names.get(k, k), v) for k, v in url_query(parts).items()
        }
        return options.with_overrides(overrides)

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> NatsOptions:
        """From NestJS's NATS ``options`` (``servers``, ``user``, ``pass``, ``token``,
        ``queue``, ``name``, ``tls``, ``headers``, ``inboxPrefix``, ms timings...)."""
        rest = dict(options)
        result = cls()
        servers = rest.pop("servers", rest.pop("url", None))
        if servers is not None:
            urls = [servers] if isinstance(servers, str) else list(servers)
            result.servers = []
            for server in urls:
                scheme, sep, hostpart = server.partition("://")
                if not sep:
                    scheme, hostpart = "nats", server
                if "@" in hostpart:  # credentials in a server URL move to the (hidden) fields
                    userinfo, hostpart = hostpart.rsplit("@", 1)
                    name, colon, secret = userinfo.partition(":")
                    if colon:
                        result.user, result.password = unquote(name), unquote(secret)
                    else:
                        result.token = unquote(name)
                result.servers.append(f"{scheme}://{hostpart}")
            if all(u.startswith("tls://") for u in result.servers):
                result.tls = True
        if "pass" in rest:
            rest["password"] = rest.pop("pass")
        for key, name in (
            ("reconnectTimeWait", "reconnect_time_wait"),
            ("pingInterval", "ping_interval"),
        ):
            if key in rest:
                rest[name] = float(rest.pop(key)) / 1000
        if "timeout" in rest:
            rest["connect_timeout"] = float(rest.pop("timeout")) / 1000
        if "maxPingOut" in rest:
            rest["max_outstanding_pings"] = rest.pop("maxPingOut")
        if "noEcho" in rest:
            rest["no_echo"] = rest.pop("noEcho")
        tls = rest.pop("tls", None)
        for ignored in (
            "serializer",
            "deserializer",
            "debug",
            "verbose",
            "pedantic",
            "gracefulShutdown",
        ):
            rest.pop(ignored, None)
        result = result.with_overrides(rest)
        if isinstance(tls, ssl.SSLContext):
            result.tls, result.ssl_context = True, tls
        elif isinstance(tls, Mapping):
            names = {"caFile": "ca_file", "certFile": "cert_file", "keyFile": "key_file"}
            known = {k: v for k, v in tls.items() if k in names}
            result = result.with_overrides({names[k]: v for k, v in known.items()})
            result.tls = True
        elif tls:
            result.tls = True
        return result

    def client_ssl(self) -> ssl.SSLContext | None:
        if self.ssl_context is not None:
            return self.ssl_context
        if not (self.tls or self.ca_file or self.cert_file):
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def describe(self) -> str:
        """The servers, for messages and reprs (any user info, e.g. a token, redacted)."""
        return ",".join(_without_userinfo(server) for server in self.servers)


def _without_userinfo(server: str) -> str:
    scheme, sep, rest = server.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


_INTS = {
    "max_message_bytes",
    "max_reconnect_attempts",
    "max_outstanding_pings",
    "pending_size",
    "flusher_queue_size",
    "pending_msgs_limit",
    "pending_bytes_limit",
}
_FLOATS = {"connect_timeout", "reconnect_time_wait", "ping_interval"}
_BOOLS = {"tls", "confirm_publish", "send_deadline", "no_echo"}


def _coerce(name: str, value: str) -> Any:
    try:
        if name in _INTS:
            return int(value)
        if name in _FLOATS:
            return float(value)
    except ValueError:
        raise ConfigError(f"option {name} must be a number, got {value!r}") from None
    if name in _BOOLS:
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"option {name} must be a boolean, got {value!r}")
    return value


# -- connection (shared by both halves) ---------------------------------------------------


class _Callbacks:
    """nats-py connection callbacks; subclasses report what they need."""

    _closing = False

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats_errors.SlowConsumerError):
            log.warning("NATS slow consumer on %r: message dropped", exc.subject)
        elif isinstance(exc, (OSError, asyncio.TimeoutError, nats_errors.StaleConnectionError)):
            log.debug("NATS connection error: %r", exc)
        elif not self._closing:
            log.warning("NATS error: %r", exc)

    async def _on_disconnected(self) -> None:
        pass

    async def _on_reconnected(self) -> None:
        pass

    async def _on_closed(self) -> None:
        pass


async def _connect(options: NatsOptions, owner: _Callbacks) -> NatsClient:
    """Connect, failing fast when no server answers; reconnect forever afterwards."""
    nc = NatsClient()
    try:
        await nc.connect(
            servers=list(options.servers),
            error_cb=owner._on_error,
            disconnected_cb=owner._on_disconnected,
            reconnected_cb=owner._on_reconnected,
            closed_cb=owner._on_closed,
            name=options.name,
            allow_reconnect=True,
            connect_timeout=options.connect_timeout,  # type: ignore[arg-type]
            reconnect_time_wait=options.reconnect_time_wait,  # type: ignore[arg-type]
            # nats-py's first connect retries each server this many more times, then gives up
            max_reconnect_attempts=1,
            ping_interval=options.ping_interval,  # type: ignore[arg-type]
            max_outstanding_pings=options.max_outstanding_pings,
            flusher_queue_size=options.flusher_queue_size,
            no_echo=options.no_echo,
            tls=options.client_ssl(),
            tls_hostname=options.tls_hostname,
            user=options.user,
            password=options.password,
            token=options.token,
            user_credentials=options.creds_file,
            inbox_prefix=options.inbox_prefix,
            pending_size=options.pending_size,
        )
    except (nats_errors.Error, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        cause = (
            nc.last_error if isinstance(exc, nats_errors.NoServersError) and nc.last_error else exc
        )
        owner._closing = True
        with contextlib.suppress(Exception):
            await nc.close()
        raise TransportError(
            f"cannot connect to NATS at {options.describe()}: {_describe(cause)}"
        ) from exc
    # Once connected, reconnect as configured (forever by default; 0: never).
    nc.options["max_reconnect_attempts"] = options.max_reconnect_attempts
    if options.max_reconnect_attempts == 0:
        nc.options["allow_reconnect"] = False
    return nc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _map_publish_error(exc: Exception, subject: str, nc: NatsClient, size: int) -> Exception:
    if isinstance(exc, nats_errors.MaxPayloadError):
        return ProtocolError(
            f"message of {size} bytes exceeds the NATS server's max_payload "
            f"of {nc.max_payload} bytes"
        )
    if isinstance(exc, nats_errors.BadSubjectError):
        return ConfigError(
            f"{subject!r} is not a valid NATS subject (no spaces; '.' splits tokens)"
        )
    if isinstance(exc, nats_errors.BadHeaderError):
        return ProtocolError(f"invalid NATS header name: {exc}")
    if isinstance(exc, nats_errors.OutboundBufferLimitError):
        return TransportError("NATS connection lost and the outgoing buffer is full")
    if isinstance(exc, (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError)):
        return TransportError("NATS connection is closed")
    return TransportError(f"NATS publish to {subject!r} failed: {_describe(exc)}")


# -- client -------------------------------------------------------------------------------


class NatsClientTransport(_Callbacks):
    """One connection and one wildcard inbox subscription for every request."""

    features = FEATURES

    def __init__(self, options: NatsOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._nc: NatsClient | None = None
        self._sub: Subscription | None = None
        self._prefix = ""
        self._prefix_len = 0
        self._routes: dict[str, str] = {}
        """Request id → route of every request in flight (for NoRespondersError)."""
        self._headers = dict(options.headers) if options.headers else None
        self._use_headers = True
        self._max = options.max_message_bytes
        self._send_deadline = options.send_deadline

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        self._closing = False
        nc = await _connect(self.options, self)
        # Headers (and so no-responders) need nats-server >= 2.2.
        self._use_headers = bool(getattr(nc, "_server_info", {}).get("headers", True))
        self._prefix = f"{nc.new_inbox()}."
        self._prefix_len = len(self._prefix)
        try:
            self._sub = await nc.subscribe(
                f"{self._prefix}>",
                cb=self._on_reply,
                pending_msgs_limit=0,  # the callback never blocks: no reason to drop replies
                pending_bytes_limit=0,
            )
        except nats_errors.Error as exc:
            await nc.close()
            raise TransportError(f"cannot subscribe to the reply inbox: {_describe(exc)}") from exc
        self._nc = nc

    async def _on_reply(self, msg: Msg) -> None:
        sink = self._sink
        if sink is None:
            return
        rid = msg.subject[self._prefix_len :]
        data = msg.data
        if not data:
            route = self._routes.get(rid)
            if route is None:
                return
            headers = msg.headers
            status = headers.get(_STATUS) if headers else None
            if status is None or status == _NO_RESPONDERS:
                sink.on_request_error(
                    rid,
                    NoRespondersError(
                        f"no subscribers listening on {route!r} (empty NATS response)"
                    ),
                )
            else:
                sink.on_request_error(rid, TransportError(f"NATS status {status} for {route!r}"))
            return
        if len(data) > self._max:
            sink.on_request_error(
                rid,
                ProtocolError(f"reply of {len(data)} bytes exceeds max_message_bytes={self._max}"),
            )
            return
        try:
            reply = decode_reply(self._serializer, data)
        except ProtocolError as exc:
            sink.on_request_error(rid, exc)
            return
        reply.id = rid
        sink.on_reply(reply)

    def _headers_for(
        self, headers: dict[str, str] | None, deadline: float | None
    ) -> dict[str, str] | None:
        base = self._headers
        if base is not None:
            headers = {**base, **headers} if headers else base
        if deadline is not None and self._send_deadline:
            value = f"{deadline:.3f}"
            headers = {**headers, DEADLINE_HEADER: value} if headers else {DEADLINE_HEADER: value}
        if headers and not self._use_headers:
            return None
        return headers

    async def request(self, request: Request) -> Release:
        nc = self._nc
        if nc is None:
            raise TransportError("NATS client is not connected")
        # The deadline rides in the body's NestJS ``metadata`` unless the request has
        # headers anyway: nats-py builds and parses header blocks in Python (~20% of CPU).
        headers = None
        if request.headers or self._headers:
            headers = self._headers_for(request.headers, request.deadline)
        send_metadata = headers is None and self._send_deadline
        body = encode_request(self._serializer, request, metadata=send_metadata)
        if len(body) > self._max:
            raise ProtocolError(
                f"message of {len(body)} bytes exceeds max_message_bytes={self._max}"
            )
        rid = request.id
        routes = self._routes
        routes[rid] = request.route
        try:
            await nc.publish(
                request.route,
                body,
                self._prefix + rid,
                headers,
            )
        except nats_errors.Error as exc:
            routes.pop(rid, None)
            raise _map_publish_error(exc, request.route, nc, len(body)) from exc
        except BaseException:
            routes.pop(rid, None)
            raise

        def release() -> None:
            routes.pop(rid, None)

        return release

    async def publish_event(self, event: Event) -> None:
        nc = self._nc
        if nc is None:
            raise TransportError("NATS client is not connected")
        body = encode_event(self._serializer, event)
        if len(body) > self._max:
            raise ProtocolError(
                f"message of {len(body)} bytes exceeds max_message_bytes={self._max}"
            )
        try:
            await nc.publish(event.route, body, "", self._headers_for(event.headers, None))
            if self.options.confirm_publish:
                await nc.flush()
        except nats_errors.Error as exc:
            raise _map_publish_error(exc, event.route, nc, len(body)) from exc

    async def close(self) -> None:
        self._closing = True
        nc, self._nc = self._nc, None
        self._sink = None
        self._routes.clear()
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (nats_errors.Error, OSError) as exc:  # pragma: no cover - best effort
                log.debug("error while closing the NATS connection: %r", exc)

    # connection callbacks

    async def _on_disconnected(self) -> None:
        sink = self._sink
        if sink is None or self._closing:
            return
        sink.on_status(ConnectionStatus.DISCONNECTED)
        sink.on_connection_lost(
            TransportError(f"connection to NATS at {self.options.describe()} lost")
        )
        nc = self._nc
        if nc is not None and nc.is_reconnecting:
            sink.on_status(ConnectionStatus.RECONNECTING)

    async def _on_reconnected(self) -> None:
        sink = self._sink
        if sink is not None and not self._closing:
            sink.on_status(ConnectionStatus.CONNECTED)

    async def _on_closed(self) -> None:
        sink = self._sink
        if sink is None or self._closing:
            return
        log.warning(
            "NATS connection to %s closed: %r",
            self.options.describe(),
            self._nc and self._nc.last_error,
        )
        sink.on_connection_lost(
            TransportError(f"connection to NATS at {self.options.describe()} closed")
        )
        sink.on_status(ConnectionStatus.CLOSED)

    def __repr__(self) -> str:
        return f"NatsClientTransport({self.options.describe()})"


# -- server -------------------------------------------------------------------------------


class NatsContext(Context):
    """Context of a NATS message.

    - ``pattern``: the route the handler subscribed to (may contain wildcards)
    - ``subject``: the subject the message was published to
    - ``reply``: the reply subject (``""`` for events)
    - ``headers``: the message's NATS headers (``None`` when it had none)
    - ``msg``: the raw ``nats.aio.msg.Msg``
    """

    __slots__ = ("_nc", "_serializer", "msg")
    transport_name = "nats"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        headers: dict[str, str] | None,
        deadline: float | None,
        msg: Msg,
        nc: NatsClient,
        serializer: Serializer,
    ) -> None:
        super().__init__(pattern, data, id, headers, deadline)
        self.msg = msg
        self._nc = nc
        self._serializer = serializer

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def reply(self) -> str:
        return self.msg.reply

    async def send_reply(self, reply: Reply) -> None:
        subject = self.msg.reply
        nc = self._nc
        if not subject or nc.is_closed:
            return
        body = encode_reply(self._serializer, reply)
        try:
            await nc.publish(subject, body)
        except nats_errors.Error as exc:
            raise _map_publish_error(exc, subject, nc, len(body)) from exc


class NatsServerTransport(_Callbacks):
    features = FEATURES

    def __init__(self, options: NatsOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._nc: NatsClient | None = None
        self._subs: list[Subscription] = []

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._closing = False
        nc = self._nc
        if nc is None:
            nc = self._nc = await _connect(self.options, self)
        try:
            for spec in routes:
                queue = spec.options.get("queue") or self.options.queue or ""
                self._subs.append(
                    await nc.subscribe(
                        spec.route,
                        queue=queue,
                        cb=self._receiver(spec.route, sink, nc),
                        pending_msgs_limit=self.options.pending_msgs_limit,
                        pending_bytes_limit=self.options.pending_bytes_limit,
                    )
                )
            await nc.flush()  # the server has every SUB: messages published now reach us
        except nats_errors.BadSubjectError as exc:
            await self.close()
            raise ConfigError(
                f"cannot subscribe: {_describe(exc)} (a route must be a valid NATS subject)"
            ) from exc
        except (nats_errors.Error, OSError, asyncio.TimeoutError) as exc:
            await self.close()
            raise TransportError(
                f"cannot subscribe on NATS at {self.options.describe()}: {_describe(exc)}"
            ) from exc

    def _receiver(self, route: str, sink: MessageSink, nc: NatsClient) -> Any:
        serializer = self._serializer
        limit = self.options.max_message_bytes

        async def receive(msg: Msg) -> None:
            data = msg.data
            if len(data) > limit:
                log.warning(
                    "dropping a %d-byte message on %r: above max_message_bytes=%d",
                    len(data),
                    msg.subject,
                    limit,
                )
                return
            try:
                incoming = decode_incoming(serializer, data, channel=route)
            except ProtocolError as exc:
                log.warning("dropping an undecodable message on %r: %s", msg.subject, exc)
                return
            headers = msg.headers
            if headers:
                deadline = parse_deadline(headers)
            else:  # a client without headers may send it in NestJS v12's body ``metadata``
                deadline = parse_deadline(incoming.metadata) if incoming.metadata else None
            await sink(
                NatsContext(
                    incoming.pattern,
                    incoming.data,
                    incoming.id,
                    headers,
                    deadline,
                    msg,
                    nc,
                    serializer,
                )
            )

        return receive

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        for sub in subs:
            try:
                await sub.unsubscribe()
            except nats_errors.Error as exc:
                log.debug("unsubscribe failed: %r", exc)

    async def close(self) -> None:
        await self.stop()
        self._closing = True
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (nats_errors.Error, OSError) as exc:  # pragma: no cover - best effort
                log.debug("error while closing the NATS connection: %r", exc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS server connection to %s lost; reconnecting", self.options.describe())

    async def _on_reconnected(self) -> None:
        if not self._closing:
            log.info("NATS server connection to %s restored", self.options.describe())

    def __repr__(self) -> str:
        return f"NatsServerTransport({self.options.describe()})"


PLUGIN = TransportPlugin("NATS", NatsOptions, NatsClientTransport, NatsServerTransport)
