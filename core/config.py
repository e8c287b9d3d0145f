"""Choosing a transport by configuration: URLs, NestJS-style dicts, environment variables.

A transport is found by URL scheme or NestJS ``Transport`` name among the declared
transports (:mod:`polybus.plugins`: the ``polybus.transports`` entry-point group, which the
built-in transports use too); core keeps no list of them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .abc import ClientTransport, Features, ServerTransport
from .errors import ConfigError, ProtocolError
from .plugins import TransportPlugin, find_by_nest_name, find_by_scheme
from .secrets import quote_userinfo, split_userinfo
from .serializers import Serializer, resolve_serializer

__all__ = [
    "TLS_FILE_ALIASES",
    "TransportOptions",
    "coerce_options",
    "create_client_transport",
    "create_server_transport",
    "features_of",
    "redact_url",
    "resolve_target",
    "snake_case",
    "tls_client_context",
]

ENV_URL = "POLYBUS_URL"


OptionsT = TypeVar("OptionsT", bound="TransportOptions")

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake_case(name: str) -> str:
    """``prefetchCount`` → ``prefetch_count`` (NestJS option names to polybus ones)."""
    return _CAMEL.sub("_", name).lower()


@dataclass
class TransportOptions:
    """Base of every adapter's options dataclass.

    Subclasses add fields (secrets with ``repr=False``) and implement :meth:`from_url`.
    Option names are accepted in snake_case or NestJS's camelCase.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest message accepted or sent; larger ones are refused with ``ProtocolError``."""

    def __post_init__(self) -> None:
        # Text given for a typed option (URL query, environment, a NestJS-style dict)
        # becomes a value of the field's type, or a ConfigError naming the option.
        text = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        text = {name: value for name, value in text.items() if isinstance(value, str)}
        for name, value in coerce_options(type(self), text).items():
            setattr(self, name, value)

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
            name = key if key in names else snake_case(key)
            if name not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(
                    f"unknown option {key!r} for {type(self).__name__}; known: {known}"
                )
            changes[name] = value
        return dataclasses.replace(self, **changes)

    def with_query(
        self: OptionsT, query: Mapping[str, str], aliases: Mapping[str, str] | None = None
    ) -> OptionsT:
        """These options with a URL's query parameters applied: short names renamed by
        ``aliases``, camelCase accepted, text converted to each option's type."""
        if aliases:
            query = {aliases.get(key, key): value for key, value in query.items()}
        return self.with_overrides(query)

    def check_size(self, body: bytes, what: str = "message") -> bytes:
        """``body`` if it fits ``max_message_bytes``, else ``ProtocolError``."""
        limit = self.max_message_bytes
        if len(body) > limit:
            raise ProtocolError(f"{what} of {len(body)} bytes exceeds max_message_bytes={limit}")
        return body


# -- typed option values from text ----------------------------------------------------------

_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))
_TEXT_TYPES = frozenset(("str", "Any", "object"))
_EXPECTED = {"bool": "a boolean", "int": "an integer", "float": "a number", "list": "a list"}


def coerce_options(cls: type[TransportOptions], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every text value of a typed option converted to that option's type,
    as the options dataclass ``cls`` declares it.

    Booleans accept ``1/0``, ``true/false``, ``yes/no``, ``on/off``; ints and floats their
    Python spelling; lists comma-separated items. A union tries its types in turn, text
    last (``acks: int | str`` takes ``1`` and ``all``). Names that are not fields, values
    that are not text and text options are left as they are. A value that fits none of the
    types raises ``ConfigError`` naming the option and the value.
    """
    kinds = _field_kinds(cls)
    out = dict(values)
    for name, value in values.items():
        alternatives = kinds.get(name)
        if alternatives is not None and isinstance(value, str):
            out[name] = _from_text(name, alternatives, value)
    return out


def _from_text(name: str, alternatives: tuple[str, ...], text: str) -> Any:
    for kind in alternatives:
        value = _parse(kind, text)
        if value is not _UNPARSED:
            return value
    if any(kind in _TEXT_TYPES for kind in alternatives):
        return text
    expected = " or ".join(_EXPECTED[kind] for kind in alternatives if kind in _EXPECTED)
    if not expected:
        raise ConfigError(f"option {name} cannot be given as text, got {text!r}")
    raise ConfigError(f"option {name} must be {expected}, got {text!r}")


_UNPARSED: Any = object()


def _parse(kind: str, text: str) -> Any:
    """``text`` as a value of the type named ``kind``, or ``_UNPARSED``."""
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
    elif kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            pass
    elif kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    return _UNPARSED


_FIELD_KINDS: dict[type, dict[str, tuple[str, ...]]] = {}


def _field_kinds(cls: type[TransportOptions]) -> dict[str, tuple[str, ...]]:
    """Field name → the names of the types its annotation allows (``None`` left out):
    ``int | None`` → ``("int",)``, ``list[str]`` → ``("list",)``."""
    kinds = _FIELD_KINDS.get(cls)
    if kinds is None:
        kinds = _FIELD_KINDS[cls] = {
            f.name: tuple(name for name in _type_names(f.type) if name != "None")
            for f in dataclasses.fields(cls)
        }
    return kinds


def _type_names(annotation: Any) -> list[str]:
    if isinstance(annotation, str):
        text = annotation.strip()
        if text.startswith("Optional[") and text.endswith("]"):
            text = text[len("Optional[") : -1] + " | None"
        names: list[str] = []
        depth = start = 0
        for i, char in enumerate(text + "|"):
            if char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            elif char == "|" and depth == 0:
                names.append(text[start:i].strip().split("[", 1)[0].rsplit(".", 1)[-1])
                start = i + 1
        return names
    if annotation is None or annotation is type(None):
        return ["None"]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [name for arg in typing.get_args(annotation) for name in _type_names(arg)]
    origin = typing.get_origin(annotation) or annotation
    return [getattr(origin, "__name__", str(origin))]


# -- TLS --------------------------------------------------------------------------------

TLS_FILE_ALIASES: dict[str, str] = {
    "ca": "ca_file",
    "cafile": "ca_file",
    "cert": "cert_file",
    "certfile": "cert_file",
    "key": "key_file",
    "keyfile": "key_file",
}
"""Short URL query names of the ``ca_file``/``cert_file``/``key_file`` options."""


def tls_client_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, password: str | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file`` (else the system CAs), presenting
    ``cert_file``/``key_file`` when given."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file, password)
    return context


def split_url(url: str, schemes: tuple[str, ...]) -> SplitResult:
    """``urlsplit`` with a check of the scheme and the port, raising ``ConfigError``."""
    try:
        parts = urlsplit(quote_userinfo(url))
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


_SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, reprs and errors).

    The credentials are found as :func:`polybus.secrets.split_userinfo` finds them, so a
    password holding unencoded ``/ ? # @ :`` is hidden whole; a user without a password
    (a NATS token) is hidden too, and so are query options named like a secret."""
    head, userinfo, rest = split_userinfo(url)
    rest = _SECRET_QUERY.sub(r"\1***", rest)
    if userinfo is None:
        return head + rest
    user, colon, _ = userinfo.partition(":")
    return f"{head}{user}:***@{rest}" if colon else f"{head}***@{rest}"


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
        plugin = find_by_scheme(scheme).load()
        return plugin, plugin.options.from_url(quote_userinfo(target)).with_overrides(overrides)
    if isinstance(target, Mapping):
        return _from_dict(target, overrides)
    raise ConfigError(f"cannot configure a transport from {type(target).__name__}")


def _from_dict(
    config: Mapping[str, Any], overrides: Mapping[str, Any]
) -> tuple[TransportPlugin, TransportOptions]:
    unknown = set(config) - {"transport", "options", "name", "url"}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    plugin = find_by_nest_name(config.get("transport", "TCP")).load()
    options = dict(config.get("options") or {})
    url = config.get("url") or options.pop("url", None)
    base = (
        plugin.options.from_url(quote_userinfo(url)) if url else plugin.options.from_nest(options)
    )
    if url:
        base = base.with_overrides(options)
    return plugin, base.with_overrides(overrides)


def features_of(target: Any) -> Features:
    """The declared features of the transport a URL or dict selects (options may change
    them: NATS JetStream)."""
    plugin, options = resolve_target(target, {})
    return plugin.features(options)


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
