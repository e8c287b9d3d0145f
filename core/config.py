"""Choosing a transport by configuration: URLs, NestJS-style dicts, environment variables.

A transport is found by URL scheme or NestJS ``Transport`` name among the declared
transports (:mod:`polybus.plugins`: the ``polybus.transports`` entry-point group, which the
built-in transports use too); core keeps no list of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import ssl
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

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


def coerce_options(cls: type[TransportOptions], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every text value of a typed option converted to that option's type,
    as the options dataclass ``cls`` declares it (pydantic's lax mode does the work).

    Booleans accept ``1/0``, ``true/false``, ``yes/no``, ``on/off``; ints and floats their
    Python spelling; lists comma-separated items. A union tries its types in turn, text
    last (``acks: int | str`` takes ``1`` and ``all``). Names that are not fields, values
    that are not text and text options are left as they are. A value that fits none of the
    types raises ``ConfigError`` naming the option and the value.
    """
    adapters = _text_adapters(cls)  # type: ignore[arg-type]  # mypy: instances are unhashable
    out = dict(values)
    for name, value in values.items():
        adapter = adapters.get(name)
        if adapter is not None and isinstance(value, str):
            out[name] = _from_text(name, adapter, value)
    return out


_EXPECTED = {
    "bool_parsing": "a boolean",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
}
"""pydantic's error types → what the option must be, for the message."""


def _from_text(name: str, adapter: TypeAdapter[Any], text: str) -> Any:
    try:
        return adapter.validate_python(text)
    except ValidationError as exc:
        stripped = text.strip()  # " yes " (pydantic strips numbers, not booleans)
        if stripped != text:
            with contextlib.suppress(ValidationError):
                return adapter.validate_python(stripped)
        kinds = dict.fromkeys(_EXPECTED[e["type"]] for e in exc.errors() if e["type"] in _EXPECTED)
    if not kinds:
        raise ConfigError(f"option {name} cannot be given as text, got {text!r}") from None
    raise ConfigError(f"option {name} must be {' or '.join(kinds)}, got {text!r}") from None


@functools.cache
def _text_adapters(cls: type[TransportOptions]) -> dict[str, TypeAdapter[Any]]:
    """Field name → the pydantic adapter reading its type from text."""
    hints = typing.get_type_hints(cls)
    config = ConfigDict(arbitrary_types_allowed=True)  # ssl.SSLContext: never from text
    return {
        f.name: TypeAdapter(_from_text_type(hints[f.name]), config=config)
        for f in dataclasses.fields(cls)
    }


def _split_items(value: Any) -> Any:
    return (
        [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, str)
        else value
    )


def _from_text_type(annotation: Any) -> Any:
    """``annotation`` as text reads it: a union tries its members in turn, text last; a
    list is comma-separated."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = sorted((_from_text_type(arg) for arg in args), key=lambda arg: arg is str)
        union: Any = typing.Union[tuple(members)]  # noqa: UP007 - built at run time
        if len(members) - (type(None) in members) < 2:
            return union  # ``X | None``: pydantic's nullable X, no choice to make
        return Annotated[union, Field(union_mode="left_to_right")]
    if typing.get_origin(annotation) is list:
        return Annotated[annotation, BeforeValidator(_split_items)]
    return annotation


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
