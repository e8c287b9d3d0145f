"""RabbitMQ options: ``amqp://user:pass@host:5672/vhost?queue=orders&...``, NestJS ``options``.

``amqps://`` takes ``ca_file``/``cert_file``/``key_file`` (also ``ca``/``cert``/``key``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from polybus.config import (
    TLS_FILE_ALIASES,
    TransportOptions,
    snake_case,
    split_url,
    tls_client_context,
    url_query,
)
from polybus.errors import ConfigError

from ._common import DIRECT_REPLY_TO

__all__ = ["RabbitMQOptions"]

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

_URL_ALIASES = {**TLS_FILE_ALIASES, "name": "connection_name"}


@dataclass
class RabbitMQOptions(TransportOptions):
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
    publisher_confirms: bool | None = None
    """Client: wait for the broker's confirm on every publish, so that ``emit()``/``send()``
    resolve only once the broker has the message. ``None`` (default): confirm exactly when
    ``persistent`` is on (a durable configuration; unconfirmed, a broker restart loses
    events ``emit()`` reported sent). ``False`` opts out (NestJS's behaviour, faster);
    ``True`` confirms non-persistent messages too."""
    heartbeat: int = 5
    reconnect_interval: float = 1.0
    connect_timeout: float = 10.0
    connection_name: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    exchange: str | None = None
    """NestJS ``exchange``: with ``wildcards`` or a ``fanout`` type the client publishes to
    it (default: the queue's name); the server declares it and binds its queue to it."""
    exchange_type: str = "topic"
    """NestJS ``exchangeType``: ``topic`` (default), ``fanout``, ``direct``, ``headers``, or
    a plugin's type; the exchange is declared durable with this type."""
    routing_key: str | None = None
    """NestJS ``routingKey``: the binding key of the queue to ``exchange`` (ignored by a
    ``fanout`` exchange, which is bound with ``''``)."""
    wildcards: bool = False
    """NestJS ``wildcards``: the server binds its queue with every handler route and routes
    a pattern no route equals to the first ``*``/``#`` handler route matching it
    (``.``-separated words); the client publishes to ``exchange`` with routing key = the
    pattern (a string as is, else compact JSON in the caller's key order). As with NestJS,
    the client declares only the exchange: what it publishes before a server bound its
    queue, or under a key no binding matches, the broker drops (a request times out)."""
    exchange_arguments: dict[str, Any] = field(default_factory=dict)
    """NestJS ``exchangeArguments``: the ``arguments`` of the exchange declaration."""

    @classmethod
    def from_url(cls, url: str) -> RabbitMQOptions:
        parts = split_url(url, ("amqp", "amqps"))
        options = cls(urls=[parts._replace(query="", fragment="").geturl()])
        return options.with_query(url_query(parts), _URL_ALIASES)

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> RabbitMQOptions:
        options = dict(options)
        urls = options.pop("urls", None)
        socket = options.pop("socketOptions", None) or options.pop("socket_options", None) or {}
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
            name = snake_case(key)
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

    @property
    def confirms(self) -> bool:
        """Whether the client's publishes wait for the broker's confirm."""
        if self.publisher_confirms is None:
            return self.persistent
        return self.publisher_confirms

    def client_ssl(self) -> ssl.SSLContext | None:
        if self.ssl_context is not None:
            return self.ssl_context
        if not (self.ca_file or self.cert_file):
            return None
        return tls_client_context(self.ca_file, self.cert_file, self.key_file)

    def connection_url(self, url: str) -> str:
        """The URL handed to aio-pika: ours plus the aiormq query parameters."""
        query: dict[str, str] = {"heartbeat": str(self.heartbeat)}
        if self.connection_name:
            query["name"] = self.connection_name
        return f"{url}?{urlencode(query)}"

    @property
    def publishes_to_exchange(self) -> bool:
        """Whether the client publishes to :attr:`exchange_name` by pattern (NestJS: with
        ``wildcards`` or a ``fanout`` exchange; otherwise straight to the queue)."""
        return self.wildcards or self.exchange_type == "fanout"

    @property
    def uses_exchange(self) -> bool:
        """Whether the server declares an exchange (NestJS: ``exchange`` or ``wildcards``)."""
        return bool(self.exchange) or self.wildcards

    @property
    def exchange_name(self) -> str:
        return self.exchange or self.queue

    def validate(self) -> None:
        if not self.queue:
            raise ConfigError("the RabbitMQ transport needs a queue (URL ?queue=... or queue=...)")
        if not self.exchange_type:
            raise ConfigError("the RabbitMQ exchange_type must not be empty")
        if not isinstance(self.exchange_arguments, dict):
            raise ConfigError("the RabbitMQ exchange_arguments must be a mapping")
        self.declare_arguments()
