"""Redis options: ``redis://[user:pass@]host:port[/db]?option=value``, NestJS ``options``."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection, SSLConnection

from polybus.config import TransportOptions, split_url, url_credentials, url_query

__all__ = ["RedisOptions"]

_KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}
"""A silently dead peer is noticed in about 45 s."""


@dataclass
class RedisOptions(TransportOptions):
    """Where and how to reach Redis. URL query parameters and NestJS options map here."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Below what Redis accepts by default: its ``client-output-buffer-limit pubsub 32mb 8mb
    60`` drops a subscriber whose pending output passes 32 MiB (at once) or 8 MiB (for 60 s),
    and a message's buffer can take 1.25x its size (jemalloc's size classes: a 33 MiB message
    took 40 MiB). At 4 MiB, one message stays under the soft limit and six under the hard
    one. Raise it together with the broker's limit."""
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

    @classmethod
    def from_url(cls, url: str) -> RedisOptions:
        parts = split_url(url, ("redis", "rediss"))
        user, password = url_credentials(parts)
        path = parts.path.strip("/")
        options = cls(
            host=parts.hostname or "localhost",
            port=6379 if parts.port is None else parts.port,
            username=user,
            password=password,
            tls=parts.scheme == "rediss",
        )
        query = url_query(parts)
        if path:
            query = {"db": path, **query}
        return options.with_query(query)

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
