"""NATS options: ``nats://[user:pass@]host:port[,host:port...]?option=value``, ``tls://``."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from polybus.config import (
    TLS_FILE_ALIASES,
    TransportOptions,
    redact_url,
    tls_client_context,
    url_query,
)
from polybus.errors import ConfigError

__all__ = ["NatsOptions"]

_URL_ALIASES = {**TLS_FILE_ALIASES, "creds": "creds_file", "pass": "password"}


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
    jetstream: bool = False
    """Events through JetStream (not NestJS-compatible: NestJS has no JetStream transport).
    Client: ``emit()`` resolves once the stream acknowledged the event. Server: event
    routes are read from durable consumers and acknowledged after their handler."""
    stream: str | None = None
    """JetStream: the service's stream (created if missing, file storage), covering its
    event routes (default: the durable name)."""
    durable: str | None = None
    """JetStream: durable consumer name; instances sharing it compete for the events
    (default: ``queue``, else ``name``, else ``"polybus"``)."""
    ack_wait: float = 30.0
    """JetStream: an event not settled within this many seconds is delivered again (also
    while its handler still runs: make it longer than the slowest handler)."""
    max_deliver: int = 5
    """JetStream: deliveries of one event at most (then the consumer skips it)."""
    max_age: float = 86400.0
    """JetStream: how long the stream keeps an event (limits retention, seconds)."""
    publish_timeout: float = 10.0
    """JetStream client: how long ``emit()`` retries (through reconnects) for the ack."""
    fetch_batch: int = 64
    """JetStream server: events fetched per pull request."""

    @property
    def durable_base(self) -> str:
        return self.durable or self.queue or self.name or "polybus"

    @classmethod
    def from_url(cls, url: str) -> NatsOptions:
        """``nats://[user:pass@]host:port[,host2:port...][?option=value...]``; ``tls://``
        for TLS. A user without password is a token. Query options: any field name (e.g.
        ``queue``, ``ca_file``, ``cert_file``, ``key_file``, ``creds_file``, ``token``,
        ``name``, ``max_message_bytes``); ``ca``/``cert``/``key``/``creds``/``pass`` are
        accepted as short names."""
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
        return options.with_query(url_query(parts), _URL_ALIASES)

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
        return tls_client_context(self.ca_file, self.cert_file, self.key_file)

    def describe(self) -> str:
        """The servers, for messages and reprs (any user info, e.g. a token, redacted)."""
        return ",".join(_without_userinfo(server) for server in self.servers)


def _without_userinfo(server: str) -> str:
    scheme, sep, rest = server.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
