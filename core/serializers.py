"""Serializers turn one message document into bytes and back.

The default, :class:`JsonSerializer`, writes what NestJS's ``JSON.stringify`` writes for
the same value (compact, raw UTF-8, ``NaN``/``Infinity`` as ``null``), so replies are
byte-compatible with a Nest peer. A serializer is chosen per client and per server
(``create_client(url, serializer=...)``, ``Microservice(url, serializer=...)``); both sides
must agree. ``binary`` tells transports whose framing needs text (TCP) that the output
is not UTF-8 text.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import ConfigError, ProtocolError

__all__ = ["JsonSerializer", "MsgpackSerializer", "Serializer", "resolve_serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Turns one document into bytes and back. Must be safe to share between tasks."""

    name: str
    binary: bool

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise ``ProtocolError`` if it cannot be encoded."""
        ...

    def loads(self, data: bytes | bytearray | memoryview | str) -> Any:
        """Decode one document; raise ``ProtocolError`` on malformed input."""
        ...


def _to_jsonable(obj: Any) -> Any:
    """orjson ``default`` hook: pydantic models and anything pydantic can serialize."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(obj)


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class JsonSerializer:
    """JSON through orjson, the NestJS default."""

    name = "json"
    binary = False

    def dumps(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=_to_jsonable, option=_JSON_OPTIONS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ProtocolError(f"cannot encode message as JSON: {exc}") from exc

    def loads(self, data: bytes | bytearray | memoryview | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"invalid JSON: {exc}") from exc

    def __repr__(self) -> str:
        return "JsonSerializer()"


class MsgpackSerializer:
    """MessagePack (``pip install polybus[msgpack]``): smaller, binary; not NestJS's default."""

    name = "msgpack"
    binary = True

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("the msgpack serializer needs: pip install polybus[msgpack]") from exc
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb
        self._errors: tuple[type[Exception], ...] = (
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            ValueError,
            TypeError,
            OverflowError,  # an int outside msgpack's 64-bit range
        )

    def dumps(self, obj: Any) -> bytes:
        try:
            out: bytes = self._packb(obj, default=_to_jsonable, use_bin_type=True)
        except self._errors as exc:
            raise ProtocolError(f"cannot encode message as msgpack: {exc}") from exc
        return out

    def loads(self, data: bytes | bytearray | memoryview | str) -> Any:
        if isinstance(data, str):
            data = data.encode()
        try:
            return self._unpackb(data, raw=False, strict_map_key=False)
        except self._errors as exc:
            raise ProtocolError(f"invalid msgpack: {exc}") from exc

    def __repr__(self) -> str:
        return "MsgpackSerializer()"


_BY_NAME: dict[str, type[Serializer]] = {"json": JsonSerializer, "msgpack": MsgpackSerializer}


def resolve_serializer(value: Serializer | str | None) -> Serializer:
    """A serializer instance from an instance, a name (``"json"``, ``"msgpack"``) or None."""
    if value is None:
        return JSON
    if isinstance(value, str):
        try:
            return _BY_NAME[value]()
        except KeyError:
            known = ", ".join(sorted(_BY_NAME))
            raise ConfigError(f"unknown serializer {value!r}; known: {known}") from None
    if not isinstance(value, Serializer):
        raise ConfigError(f"{value!r} is not a Serializer (needs name, binary, dumps, loads)")
    return value


JSON = JsonSerializer()
