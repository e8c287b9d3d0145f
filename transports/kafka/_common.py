"""What both halves share: features, header names, the record codec (NestJS's
``KafkaRequestSerializer`` and ``KafkaParser``), topic names, producing and closing."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka.errors import (  # type: ignore[import-untyped]
    ConsumerStoppedError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from polybus.abc import Features
from polybus.errors import ConfigError, ErrorMap, ProtocolError, TransportError
from polybus.packets import DEADLINE_HEADER, MISSING
from polybus.patterns import js_number
from polybus.serializers import JSON, Serializer

__all__ = [
    "CORRELATION_ID",
    "DEADLINE",
    "ERRORS",
    "FEATURES",
    "NEST_ERR",
    "NEST_IS_DISPOSED",
    "REPLY_PARTITION",
    "REPLY_TOPIC",
    "TYPE_HINT",
    "Codec",
    "OutRecord",
    "check_topic",
    "close_quietly",
    "cluster_reachable",
    "fetched_batches",
    "produce",
]

log = logging.getLogger("polybus.kafka")

FEATURES: Final = Features(
    name="kafka",
    unknown_pattern="timeout",
    unreadable_reply="fails_request",
    object_patterns=False,
    competing_consumers=True,
    durable_events=True,
    dead_letter=True,
    headers=True,
    isolation_option="group_id",
    # a service whose first instance died before committing still reads what was sent
    durable_options={"from_beginning": True},
)

CORRELATION_ID: Final = "kafka_correlationId"
REPLY_TOPIC: Final = "kafka_replyTopic"
REPLY_PARTITION: Final = "kafka_replyPartition"
NEST_ERR: Final = "kafka_nest-err"
NEST_IS_DISPOSED: Final = "kafka_nest-is-disposed"
DEADLINE: Final = DEADLINE_HEADER
TYPE_HINT: Final = "x-polybus-type"
KIND_JSON: Final = b"json"
KIND_TEXT: Final = b"text"
KIND_BYTES: Final = b"bytes"
KIND_NULL: Final = b"null"
KIND_UNDEFINED: Final = b"undefined"
DISPOSED_VALUE: Final = b"\x00"
CLOSE_TIMEOUT: Final = 10.0
"""Seconds a producer, consumer or admin client gets to close."""

_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}").fullmatch


def check_topic(route: str) -> str:
    """``route`` if it is a legal Kafka topic name, else ``ConfigError`` (object patterns)."""
    if _LEGAL_TOPIC(route) is None or route in (".", ".."):
        hint = (
            " Object patterns cannot be used on Kafka:"
            " use a dotted string pattern such as 'math.sum'."
            if route.startswith("{")
            else ""
        )
        raise ConfigError(
            f"pattern {route!r} is not a legal Kafka topic name "
            f"(1-249 characters of [a-zA-Z0-9._-]).{hint}"
        )
    return route


ERRORS: Final = ErrorMap(
    ((MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError), ProtocolError, None),
    (Exception, TransportError, None),
)
"""aiokafka's exceptions as polybus's: a record too large is the message's fault."""


Headers = list[tuple[str, bytes]]


@dataclass
class OutRecord:
    """A record to produce: what :meth:`Codec.message` makes of data, before sending."""

    key: bytes | None = None
    value: bytes | None = None
    headers: Headers = field(default_factory=list)
    partition: int | None = None
    timestamp: int | None = None


class Codec:
    """Record values and header values as NestJS writes and reads them.

    Writing (``KafkaRequestSerializer``): ``str`` as UTF-8, bytes as is, numbers and
    booleans as JavaScript's ``String(value)``, ``None``/MISSING as a null value, anything
    else through the serializer (JSON). Reading (``KafkaParser``): a value whose first byte
    is ``0x00`` stays bytes; otherwise it becomes text, parsed as JSON only if it starts
    with ``{`` or ``[``.

    NestJS's rule loses types (``42`` arrives as ``"42"``, the text ``"[1]"`` as a list,
    ``b"abc"`` as text, a null completion as an extra ``null`` item), so polybus also writes
    the kind of each value in the header ``x-polybus-type`` (``json``, ``text``, ``bytes``,
    ``null``, ``undefined``); a polybus reader that finds it decodes exactly, NestJS ignores
    it (option ``type_hints=False`` leaves it out). With a binary serializer (msgpack)
    every value goes through the serializer instead: such peers are polybus only.
    """

    __slots__ = ("_text", "hints", "keep_binary", "nest", "serializer")

    def __init__(
        self, serializer: Serializer, keep_binary: bool = False, hints: bool = True
    ) -> None:
        self.serializer = serializer
        self.nest = not serializer.binary
        self._text = serializer if self.nest else JSON
        self.keep_binary = keep_binary
        self.hints = hints

    def encode(self, value: Any) -> tuple[bytes | None, bytes]:
        """``(value bytes or None, kind)`` for a record value."""
        if value is None:
            return None, KIND_NULL
        if value is MISSING:
            return None, KIND_UNDEFINED
        if not self.nest:
            return self.serializer.dumps(value), KIND_JSON
        return self._nest(value)

    def _nest(self, value: Any) -> tuple[bytes | None, bytes]:
        if value is None or value is MISSING:
            return None, KIND_NULL
        if isinstance(value, str):
            return _utf8(value), KIND_TEXT
        if isinstance(value, bytes):
            return value, KIND_BYTES
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value), KIND_BYTES
        if isinstance(value, bool):
            return (b"true" if value else b"false"), KIND_JSON
        if isinstance(value, int):
            return str(value).encode(), KIND_JSON
        if isinstance(value, float):
            return js_number(value).encode(), KIND_JSON
        return self._text.dumps(value), KIND_JSON

    def decode(self, raw: bytes | None, kind: bytes | None = None) -> Any:
        """A record value: exactly per ``kind`` when a polybus writer named it, else by
        NestJS's rule. ``undefined`` gives MISSING."""
        if kind is not None:
            if kind == KIND_UNDEFINED:
                return MISSING
            if raw is None:
                return None
            if kind == KIND_TEXT and self.nest:
                return raw.decode("utf-8", "replace")
            if kind == KIND_BYTES and self.nest:
                return raw
            if kind == KIND_JSON:
                try:
                    return self.serializer.loads(raw)
                except ProtocolError:
                    pass
        if raw is not None and not self.nest:
            return self.serializer.loads(raw)
        return self.parse(raw)

    def parse(self, raw: bytes | None) -> Any:
        """NestJS's ``KafkaParser`` rule (headers, keys, values without a type hint)."""
        if raw is None:
            return None
        if raw[:1] == b"\x00":
            return raw
        first = raw[:1]
        if first == b"{" or first == b"[":
            try:
                return self._text.loads(raw)
            except ProtocolError:
                pass
        return raw.decode("utf-8", "replace")

    def decode_data(self, raw: bytes | None, kind: bytes | None) -> Any:
        """A request/event value for a handler (MISSING becomes None)."""
        if self.keep_binary:
            return raw
        value = self.decode(raw, kind)
        return None if value is MISSING else value

    def header(self, value: Any) -> bytes:
        """A header value: text as UTF-8, bytes as is, anything else encoded like a value."""
        if isinstance(value, str):
            return _utf8(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        encoded = self._nest(value)[0]
        return b"" if encoded is None else encoded

    def err_header(self, err: Any) -> bytes:
        """``kafka_nest-err``: JSON for an object, the text otherwise (NestJS)."""
        if not self.nest:
            return self.serializer.dumps(err)
        if isinstance(err, (dict, list)):
            return self._text.dumps(err)
        return self.header(err)

    def message(self, data: Any, headers: Mapping[str, Any] | None) -> OutRecord:
        """The record for ``data`` (and ``headers``).

        Data shaped like a Kafka message (a dict with ``key`` or ``value``) is taken to be
        one, as NestJS does: ``{"key": ..., "value": ..., "headers": {...}, "partition": n}``.
        """
        key: bytes | None = None
        partition: int | None = None
        timestamp: int | None = None
        out: Headers = []
        if isinstance(data, dict) and ("key" in data or "value" in data):
            value, kind = self.encode(data.get("value"))
            if data.get("key") is not None:
                key = self.header(data["key"])
            for name, item in (data.get("headers") or {}).items():
                out.append((str(name), self.header(item)))
            if data.get("partition") is not None:
                partition = _int_or_none(data["partition"])
            if data.get("timestamp") is not None:
                timestamp = _int_or_none(data["timestamp"])
        else:
            value, kind = self.encode(data)
        if headers:
            out.extend((name, self.header(item)) for name, item in headers.items())
        if self.hints:
            out.append((TYPE_HINT, kind))
        return OutRecord(key, value, out, partition, timestamp)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: U+FFFD, as Node's Buffer.from does
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def partition_of(raw: bytes | None) -> int | None:
    """``parseFloat(kafka_replyPartition)`` as NestJS reads it (None when absent/invalid)."""
    if raw is None:
        return None
    try:
        number = float(raw.decode("ascii", "replace").strip())
    except ValueError:
        return None
    if number != number or number < 0 or number != int(number):
        return None
    return int(number)


async def produce(
    producer: Any, topic: str, record: OutRecord, *, action: str
) -> asyncio.Future[Any]:
    """Hand ``record`` to aiokafka's ``producer``; the future resolves once the broker
    has it. A failure to hand it over is a ``TransportError`` saying ``action topic``."""
    key = record.key
    if key is None and record.value is None:
        key = b""  # aiokafka refuses a record with neither; NestJS peers ignore the key
    try:
        future: asyncio.Future[Any] = await producer.send(
            topic,
            record.value,
            key=key,
            partition=record.partition,
            timestamp_ms=record.timestamp,
            headers=record.headers,
        )
    except ERRORS.catches as exc:
        raise ERRORS.error(exc, f"kafka: cannot {action} {topic!r}") from exc
    return future


async def fetched_batches(
    consumer: Any, what: str, retry_after: float
) -> AsyncIterator[dict[Any, list[Any]]]:
    """Every batch ``consumer.getmany()`` fetches (partition → records) until the consumer
    stops; a failed fetch is logged as ``what`` and tried again after ``retry_after`` s."""
    while True:
        try:
            batches: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=1000)
        except ConsumerStoppedError:
            return
        except Exception as exc:
            log.warning("kafka: %s failed: %r", what, exc)
            await asyncio.sleep(retry_after)
            continue
        yield batches


async def cluster_reachable(producer: Any) -> bool:
    """Whether ``producer`` (None: closed) can reach at least one broker of the cluster."""
    if producer is None:
        return False
    client = producer.client
    for broker in list(client.cluster.brokers()):
        try:
            if await asyncio.wait_for(client.ready(broker.nodeId), 2.0):
                return True
        except (Exception, asyncio.TimeoutError):
            continue
    return False


async def close_quietly(closing: Awaitable[Any]) -> None:
    """Await ``closing`` (a ``stop()``/``close()``) for up to ``CLOSE_TIMEOUT`` seconds;
    errors are only logged."""
    try:
        await asyncio.wait_for(closing, CLOSE_TIMEOUT)
    except (Exception, asyncio.TimeoutError) as exc:
        log.debug("kafka: error while closing: %r", exc)
