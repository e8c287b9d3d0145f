"""TCP options: ``tcp://host:port?option=value``, ``tcps://`` for TLS, NestJS ``options``."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from polybus.config import (
    TLS_FILE_ALIASES,
    TransportOptions,
    split_url,
    tls_client_context,
    url_query,
)
from polybus.errors import ConfigError

__all__ = ["TcpOptions"]


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
        options = cls(
            host=parts.hostname or "localhost",
            port=3000 if parts.port is None else parts.port,
            tls=parts.scheme == "tcps",
        )
        return options.with_query(url_query(parts), TLS_FILE_ALIASES)

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> TcpOptions:
        options = dict(options)
        tls = options.pop("tlsOptions", None)
        result = cls().with_overrides(options)
        if tls is not None:
            result.tls = True
            if isinstance(tls, ssl.SSLContext):
                result.ssl_context = tls
            elif isinstance(tls, dict):
                result = result.with_overrides(
                    {TLS_FILE_ALIASES.get(str(k), str(k)): v for k, v in tls.items()}
                )
        return result

    def client_ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        return tls_client_context(self.ca_file, self.cert_file, self.key_file)

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
