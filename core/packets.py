"""Packets as they travel, and the NestJS JSON envelopes they are written in (docs/PROTOCOL.md §1).

Clients build :class:`Request` and :class:`Event`; servers answer with :class:`Reply`.
Envelope helpers here are shared by every transport that carries NestJS's JSON envelope
(all but Kafka, which carries the data itself).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Any, Final

from .errors import NO_HANDLER_MESSAGE, ProtocolError, short_repr
from .serializers import Serializer

if TYPE_CHECKING:
    from .abc import ReplySink

log = logging.getLogger("polybus.server")
client_log = logging.getLogger("polybus.client")

__all__ = [
    "DEADLINE_HEADER",
    "DEAD_LETTER_ERROR",
    "DEAD_LETTER_ORIGIN",
    "MISSING",
    "Event",
    "Record",
    "Reply",
    "Request",
    "decode_incoming",
    "decode_reply",
    "encode_event",
    "encode_reply",
    "encode_request",
    "merge_headers",
    "new_id_factory",
    "parse_deadline",
    "parse_deadline_value",
    "read_incoming",
    "read_reply",
    "reply_envelope",
    "unreadable_reply",
]


class _Missing:
    """The absent value: JavaScript's ``undefined`` (a key that is not there)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

DEAD_LETTER_ERROR: Final = "x-polybus-error"
"""Header a dead-lettered message carries: why its handler failed."""
DEAD_LETTER_ORIGIN: Final = "x-polybus-origin"
"""Header a dead-lettered message carries: the queue, topic, subject or channel it left."""

DEADLINE_HEADER: Final = "x-polybus-deadline"
"""Header (or NestJS v12 ``metadata`` key) carrying the caller's deadline: epoch seconds."""


@dataclass(frozen=True, slots=True)
class Record:
    """Data with per-message options, in the spirit of NestJS's record builders.

    ``client.send(pattern, Record(data, headers={...}, priority=5))``. Each transport uses
    the options that mean something to it and ignores the rest: ``headers`` (NATS, RabbitMQ,
    Kafka), ``priority``/``persistent``/``expiration_ms`` (RabbitMQ), ``key``/``partition``
    (Kafka).
    """

    data: Any
    headers: dict[str, str] | None = None
    priority: int | None = None
    persistent: bool | None = None
    expiration_ms: int | None = None
    key: str | bytes | None = None
    partition: int | None = None


@dataclass(slots=True)
class Request:
    """One outgoing request. ``pattern`` is the caller's value, ``route`` its route string."""

    id: str
    pattern: Any
    route: str
    data: Any
    headers: dict[str, str] | None = None
    deadline: float | None = None
    record: Record | None = None


@dataclass(slots=True)
class Event:
    """One outgoing event (fire-and-forget)."""

    pattern: Any
    route: str
    data: Any
    headers: dict[str, str] | None = None
    record: Record | None = None


@dataclass(slots=True)
class Reply:
    """One reply packet. ``response`` is :data:`MISSING` when the key is absent."""

    id: str | None
    response: Any = MISSING
    err: Any = None
    disposed: bool = False
    status: str | None = field(default=None)

    @classmethod
    def no_handler(cls, id: str | None) -> Reply:
        return cls(id=id, err=NO_HANDLER_MESSAGE, status="error")


def new_id_factory() -> Any:
    """Return a function making unique request ids: a random 64-bit prefix and a counter."""
    prefix = os.urandom(8).hex()
    counter = count(1)
    return lambda: f"{prefix}{next(counter):x}"


def encode_request(serializer: Serializer, request: Request, *, metadata: bool = False) -> bytes:
    """The request envelope. With ``metadata``, its headers and deadline ride in NestJS
    v12's ``metadata`` object (docs/PROTOCOL.md §1.1), which Nest servers accept and ignore or
    expose (``TcpContext.getMetadata()``); for transports without message headers."""
    packet: dict[str, Any] = {"pattern": request.pattern, "data": request.data, "id": request.id}
    if metadata:
        meta = merge_headers(request.headers, deadline=request.deadline)
        if meta:
            packet["metadata"] = meta
    return serializer.dumps(packet)


def encode_event(
    serializer: Serializer,
    event: Event,
    *,
    pattern_as_route: bool = False,
    metadata: bool = False,
) -> bytes:
    """Events carry the raw pattern, except on TCP where NestJS sends the route string."""
    pattern = event.route if pattern_as_route else event.pattern
    packet: dict[str, Any] = {"pattern": pattern, "data": event.data}
    if metadata and event.headers:
        packet["metadata"] = dict(event.headers)
    return serializer.dumps(packet)


def merge_headers(
    *layers: Mapping[str, str] | None, deadline: float | None = None
) -> dict[str, str] | None:
    """One header dict from ``layers`` (later ones win) and the caller's ``deadline``
    (:data:`DEADLINE_HEADER`, epoch seconds to the millisecond); ``None`` when empty."""
    merged: dict[str, str] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    if deadline is not None:
        merged[DEADLINE_HEADER] = f"{deadline:.3f}"
    return merged or None


def parse_deadline(headers: Mapping[str, Any] | None) -> float | None:
    """The caller's deadline from headers or metadata; ``None`` when absent or malformed."""
    if not headers:
        return None
    return parse_deadline_value(headers.get(DEADLINE_HEADER))


def parse_deadline_value(raw: Any) -> float | None:
    """A :data:`DEADLINE_HEADER` value (text or bytes) as epoch seconds; ``None`` when
    absent or malformed."""
    if raw is None:
        return None
    try:
        deadline = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return deadline if math.isfinite(deadline) else None


def reply_envelope(reply: Reply, *, with_id: bool = True) -> dict[str, Any]:
    """The reply as NestJS writes it: only envelope keys, absent keys absent."""
    body: dict[str, Any] = {}
    if reply.response is not MISSING:
        body["response"] = reply.response
    if reply.err:
        body["err"] = reply.err
    if reply.status is not None:
        body["status"] = reply.status
    if reply.disposed:
        body["isDisposed"] = True
    if with_id or reply.status is not None:
        body["id"] = reply.id
    return body


def encode_reply(serializer: Serializer, reply: Reply, *, with_id: bool = True) -> bytes:
    return serializer.dumps(reply_envelope(reply, with_id=with_id))


_ENVELOPE_KEYS: Final = frozenset(("id", "err", "response", "isDisposed", "status"))


def decode_reply(serializer: Serializer, body: bytes | bytearray | memoryview) -> Reply:
    """Decode a reply envelope; a foreign value becomes one final response (NestJS v12 rule)."""
    value = serializer.loads(body)
    if isinstance(value, dict) and value and _ENVELOPE_KEYS.issuperset(value):
        rid = value.get("id")
        if rid is not None and type(rid) is not str:
            rid = str(rid)
        # positional: a reply is decoded per request, and keywords cost twice as much here
        return Reply(
            rid,
            value.get("response", MISSING),
            value.get("err"),
            bool(value.get("isDisposed")),
            value.get("status"),
        )
    rid = value.get("id") if isinstance(value, dict) else None
    return Reply(None if rid is None else str(rid), value, None, True)


def read_reply(
    sink: ReplySink,
    serializer: Serializer,
    body: bytes | bytearray | memoryview,
    limit: int,
    where: object,
    request_id: str | None = None,
    *,
    stream: bool = False,
) -> None:
    """The reply path every client shares: decode ``body`` (a reply envelope) and hand it
    to ``sink``, or apply the rule of :class:`~polybus.abc.ClientTransport` to a reply
    over ``limit`` bytes or that cannot be decoded (:func:`unreadable_reply`; ``where``,
    the channel or topic it came on, is only formatted then).

    ``request_id`` is the request the transport says the reply belongs to without reading
    the body (NATS inbox subject, RabbitMQ ``correlation_id``); it wins over the body's
    ``id``. ``stream``: the reply came on a byte stream that cannot be resynchronised
    (TCP): the ``ProtocolError`` is raised, for the adapter to end the connection."""
    try:
        if len(body) > limit:
            raise ProtocolError(f"reply of {len(body)} bytes exceeds max_message_bytes={limit}")
        reply = decode_reply(serializer, body)
    except ProtocolError as exc:
        if stream:
            raise
        unreadable_reply(sink, exc, len(body), where, request_id)
        return
    if request_id is not None:
        reply.id = request_id
    sink.on_reply(reply)


def unreadable_reply(
    sink: ReplySink, exc: ProtocolError, size: int, where: object, request_id: str | None
) -> None:
    """A reply of ``size`` bytes that cannot be read, by the rule of
    :class:`~polybus.abc.ClientTransport`: it fails request ``request_id`` now with ``exc``;
    without one (the id was inside the body) it is logged, bounded, and dropped: its call
    ends at its timeout."""
    if request_id is not None:
        sink.on_request_error(request_id, exc)
        return
    client_log.warning(
        "dropping an unreadable reply of %d bytes on %s: %s", size, where, short_repr(str(exc))
    )


@dataclass(slots=True)
class Incoming:
    """A decoded request or event body. ``id`` is MISSING for events.

    ``pattern`` is a string from the wire (a channel, or a string pattern: looked up with
    :func:`polybus.patterns.route_from_wire`) or the caller's pattern object.
    """

    pattern: Any
    data: Any
    id: Any
    metadata: dict[str, str] | None = None
    """NestJS v12 ``metadata`` of the packet (string values only), when it had one."""


def _read_metadata(value: dict[Any, Any]) -> dict[str, str] | None:
    meta = value.get("metadata")
    if not isinstance(meta, dict) or not meta:
        return None
    for k, v in meta.items():
        if type(k) is not str or type(v) is not str:
            break
    else:
        return meta  # the usual case, kept as decoded: nothing to drop
    return {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)} or None


def read_incoming(
    serializer: Serializer,
    body: bytes | bytearray | memoryview,
    limit: int,
    where: str,
    channel: str | None = None,
) -> Incoming | None:
    """The inbound path every server shares: the body's envelope, or ``None`` when it is
    over ``limit`` bytes or cannot be decoded (logged with ``where`` it came from). The
    server then settles a ``None`` as its broker allows (reject, term) and goes on."""
    if len(body) > limit:
        log.warning(
            "dropping a %d-byte message on %s: over max_message_bytes=%d", len(body), where, limit
        )
        return None
    try:
        return decode_incoming(serializer, body, channel)
    except ProtocolError as exc:
        log.warning("dropping a malformed message on %s: %s", where, exc)
        return None


def decode_incoming(
    serializer: Serializer, body: bytes | bytearray | memoryview, channel: str | None = None
) -> Incoming:
    """Decode a request/event envelope (docs/PROTOCOL.md §1.1, §1.3).

    ``channel`` is the channel/subject the body arrived on, for transports that dispatch by
    it: there, a body with neither ``pattern`` nor ``data`` is a foreign message, handed to
    the channel's handler as an event whose data is the whole body.
    """
    value = serializer.loads(body)
    if not isinstance(value, dict):
        if channel is not None:
            return Incoming(channel, value, MISSING)
        raise ProtocolError(f"packet must be an object, got {type(value).__name__}")
    if channel is not None:
        if "pattern" not in value and "data" not in value:
            return Incoming(channel, value, MISSING)
        return Incoming(channel, value.get("data"), value.get("id", MISSING), _read_metadata(value))
    pattern = value.get("pattern")
    if pattern is None:
        raise ProtocolError("packet has no pattern")
    return Incoming(pattern, value.get("data"), value.get("id", MISSING), _read_metadata(value))
