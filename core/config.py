"""Choosing a transport by configuration: URLs, NestJS-style dicts, environment variables.

A transport is found by URL scheme in :data:`SCHEMES`, a registry of lazy import paths
(third parties add theirs with :func:`register_transport` or the ``polybus.transports``
entry-point group). Each adapter module exposes ``PLUGIN``, a :class:`TransportPlugin`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .abc import ClientTransport, Features, ServerTransport
from .errors import ConfigError
from .serializers import Serializer, resolve_serializer

__all__ = [
    "SCHEMES",
    "TransportOptions",
    "TransportPlugin",
    "create_client_transport",
    "create_server_transport",
    "features_of",
    "redact_url",
    "register_transport",
    "resolve_target",
]

SCHEMES: dict[str, str] = {
    "memory": "polybus.transports.memory",
    "tcp": "polybus.transports.tcp",
    "tcps": "polybus.transports.tcp",
    "redis": "polybus.transports.redis",
    "rediss": "polybus.transports.redis",
    "nats": "polybus.transports.nats",
    "tls": "polybus.transports.nats",
    "amqp": "polybus.transports.rabbitmq",
    "amqps": "polybus.transports.rabbitmq",
    "kafka": "polybus.transports.kafka",
}
"""URL scheme → module exposing ``PLUGIN``. Imported only when the scheme is used."""

NEST_TRANSPORTS: dict[str, str] = {
    "TCP": "tcp",
    "REDIS": "redis",
    "NATS": "nats",
    "RMQ": "amqp",
    "RABBITMQ": "amqp",
    "KAFKA": "kafka",
    "MEMORY": "memory",
}
"""NestJS ``Transport`` names (and ``Transport`` enum numbers below) → scheme."""

_NEST_NUMBERS = {0: "TCP", 1: "REDIS", 2: "NATS", 5: "RMQ", 6: "KAFKA"}

ENV_URL = "POLYBUS_URL"


@dataclass(frozen=True)
class TransportPlugin:
    """What an adapter module registers: its name, options type and the two halves."""

    name: str
    options: type[TransportOptions]
    client: type[Any]
    server: type[Any]


OptionsT = TypeVar("OptionsT", bound="TransportOptions")

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


@dataclass
class TransportOptions:
    """Base of every adapter's options dataclass.

    Subclasses add fields (secrets with ``repr=False``) and implement :meth:`from_url`.
    Option names are accepted in snake_case or NestJS's camelCase.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest message accepted or sent; larger ones are refused with ``ProtocolError``."""

    @classmethod
    def from_url(cls: type[OptionsT], url: str) -> OptionsT:
        """Options from a URL such as ``tcp://127.0.0.1:3000?max_message_bytes=1048576``."""
        raise NotImplementedError

    @classmethod
    def from_nest(cls: type[OptionsT], options: Mapping[str, Any]) -> OptionsT:
        """Options from a NestJS-style ``options`` object (camelCase names accepted)."""
        return cls().with_overrides(options)

    def with_overrides(self: OptionsT, overrides: Mapping[str, Any]) -> OptionsT:
        if not overrides:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            name = key if key in names else _snake(key)
            if name not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(
                    f"unknown option {key!r} for {type(self).__name__}; known: {known}"
                )
            changes[name] = value
        return dataclasses.replace(self, **changes)


def split_url(url: str, schemes: tuple[str, ...]) -> SplitResult:
    """``urlsplit`` with a check of the scheme and the port, raising ``ConfigError``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigError(f"invalid URL {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in schemes:
        raise ConfigError(f"URL {redact_url(url)!r} must use one of: {', '.join(schemes)}")
    return parts


def url_query(parts: SplitResult) -> dict[str, str]:
    return dict(parse_qsl(parts.query, keep_blank_values=True))


def url_credentials(parts: SplitResult) -> tuple[str | None, str | None]:
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user, password


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, reprs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def register_transport(scheme: str, module: str) -> None:
    """Make ``scheme://`` URLs use the adapter module ``module`` (which exposes ``PLUGIN``)."""
    SCHEMES[scheme] = module


def _plugin(scheme: str) -> TransportPlugin:
    module_path = SCHEMES.get(scheme)
    if module_path is None:
        for ep in entry_points(group="polybus.transports"):
            if ep.name == scheme:
                module_path = SCHEMES[scheme] = ep.value
                break
    if module_path is None:
        known = ", ".join(sorted(SCHEMES))
        raise ConfigError(f"unknown transport scheme {scheme!r}; known schemes: {known}")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        extra = {"rediss": "redis", "tls": "nats", "amqp": "rabbitmq", "amqps": "rabbitmq"}
        hint = extra.get(scheme, scheme)
        raise ConfigError(
            f"the {scheme}:// transport needs its client library: "
            f"pip install polybus[{hint}] ({exc})"
        ) from exc
    plugin: TransportPlugin = module.PLUGIN
    return plugin


def resolve_target(
    target: Any, overrides: Mapping[str, Any]
) -> tuple[TransportPlugin, TransportOptions]:
    """Turn a URL, a NestJS-style dict or ``None`` (environment) into plugin and options."""
    if target is None:
        target = os.environ.get(ENV_URL)
        if not target:
            raise ConfigError(f"no transport given: pass a URL or a config dict, or set {ENV_URL}")
    if isinstance(target, str):
        scheme = target.split("://", 1)[0] if "://" in target else ""
        if not scheme:
            raise ConfigError(f"{redact_url(target)!r} is not a URL (expected scheme://...)")
        plugin = _plugin(scheme)
        return plugin, plugin.options.from_url(target).with_overrides(overrides)
    if isinstance(target, Mapping):
        return _from_dict(target, overrides)
    raise ConfigError(f"cannot configure a transport from {type(target).__name__}")


def _from_dict(
    config: Mapping[str, Any], overrides: Mapping[str, Any]
) -> tuple[TransportPlugin, TransportOptions]:
    unknown = set(config) - {"transport", "options", "name", "url"}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    transport = config.get("transport", "TCP")
    name = getattr(transport, "name", transport)
    if isinstance(name, int):
        name = _NEST_NUMBERS.get(name, str(name))
    scheme = NEST_TRANSPORTS.get(str(name).upper())
    if scheme is None:
        known = ", ".join(sorted(NEST_TRANSPORTS))
        raise ConfigError(f"unknown transport {transport!r}; known: {known}")
    plugin = _plugin(scheme)
    options = dict(config.get("options") or {})
    url = config.get("url") or options.pop("url", None)
    base = plugin.options.from_url(url) if url else plugin.options.from_nest(options)
    if url:
        base = base.with_overrides(options)
    return plugin, base.with_overrides(overrides)


def features_of(target: Any) -> Features:
    """The declared features of the transport a URL or dict selects."""
    plugin, _ = resolve_target(target, {})
    features: Features = plugin.client.features
    return features


def _split_common(overrides: dict[str, Any]) -> Serializer:
    return resolve_serializer(overrides.pop("serializer", None))


def create_client_transport(target: Any = None, **overrides: Any) -> ClientTransport:
    """A ready-to-connect client transport for a URL, a dict, or ``$POLYBUS_URL``."""
    serializer = _split_common(overrides)
    plugin, options = resolve_target(target, overrides)
    transport: ClientTransport = plugin.client(options, serializer)
    return transport


def create_server_transport(target: Any = None, **overrides: Any) -> ServerTransport:
    """A server transport for a URL, a dict, or ``$POLYBUS_URL``."""
    serializer = _split_common(overrides)
    plugin, options = resolve_target(target, overrides)
    transport: ServerTransport = plugin.server(options, serializer)
    return transport
