"""MQTT options: ``mqtt://[user:pass@]host:port?option=value``, ``mqtts://`` for TLS."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from polybus.config import (
    TLS_FILE_ALIASES,
    TransportOptions,
    split_url,
    tls_client_context,
    url_credentials,
    url_query,
)
from polybus.errors import ConfigError

__all__ = ["MqttOptions"]

_PROTOCOLS = (3, 4, 5)
"""MQTT protocol levels: 3 is MQTT 3.1, 4 is 3.1.1 (NestJS's default), 5 is MQTT 5."""


@dataclass
class MqttOptions(TransportOptions):
    """Where and how to reach the MQTT broker. URL query parameters and NestJS
    (mqtt.js) options map here."""

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_context: ssl.SSLContext | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol_version: int = 4
    """4: MQTT 3.1.1 (as NestJS); 5: MQTT 5, whose user properties carry the headers."""
    client_id: str | None = None
    """MQTT client identifier; a random one (kept across reconnections) when ``None``."""
    clean_session: bool = True
    """False: a persistent session, so the broker keeps QoS 1/2 messages for this client
    while it is disconnected (give it a fixed ``client_id``)."""
    session_expiry: int | None = None
    """MQTT 5: seconds the broker keeps a persistent session after a disconnection."""
    qos: int = 0
    """QoS of publishes and of the server's subscriptions unless a route or record says
    otherwise (NestJS: 0)."""
    queue: str | None = None
    """Server: subscribe as ``$share/<queue>/<route>`` so instances share the messages."""
    keepalive: int = 60
    connect_timeout: float = 10.0
    send_metadata: bool = True
    """Send headers and the request deadline in the packet's NestJS ``metadata`` when there
    are no user properties (MQTT 3.1.1)."""
    user_properties: dict[str, str] | None = None
    """MQTT 5: user properties added to every publish (NestJS ``userProperties``)."""
    retry_delay: float = 0.1
    """First reconnect delay (seconds); it doubles up to ``max_retry_delay``."""
    max_retry_delay: float = 5.0
    retry_attempts: int | None = None
    """Reconnect attempts before giving up (``None``: forever)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol_version not in _PROTOCOLS:
            raise ConfigError(f"protocol_version must be 3, 4 or 5, got {self.protocol_version!r}")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"qos must be 0, 1 or 2, got {self.qos!r}")
        if self.client_id is None:
            self.client_id = f"polybus-{uuid.uuid4().hex[:16]}"

    @classmethod
    def from_url(cls, url: str) -> MqttOptions:
        parts = split_url(url, ("mqtt", "mqtts"))
        user, password = url_credentials(parts)
        tls = parts.scheme == "mqtts"
        options = cls(
            host=parts.hostname or "localhost",
            port=(8883 if tls else 1883) if parts.port is None else parts.port,
            username=user,
            password=password,
            tls=tls,
        )
        return options.with_query(url_query(parts), TLS_FILE_ALIASES)

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> MqttOptions:
        """NestJS ``MqttOptions['options']`` (mqtt.js names): ``url``, ``protocolVersion``,
        ``clientId``, ``clean``, ``userProperties``, ``ca``/``cert``/``key`` file names."""
        opts = dict(options)
        url = opts.pop("url", None)
        result = cls.from_url(str(url)) if url else cls()
        renames = {"clean": "clean_session", "clientId": "client_id", "reconnectPeriod": None}
        changes: dict[str, Any] = {}
        for key, value in opts.items():
            name = renames.get(key, TLS_FILE_ALIASES.get(key, key))
            if name is not None:
                changes[name] = value
        return result.with_overrides(changes)

    @property
    def address(self) -> str:
        """The broker address without credentials, for messages."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def client_ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        return tls_client_context(self.ca_file, self.cert_file, self.key_file)
