"""What both halves share: the features, names, and the mapping of aio-pika's errors."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from polybus.abc import Features
from polybus.errors import ProtocolError, TransportError, describe_error
from polybus.patterns import js_number

__all__ = [
    "DEFAULT_SERVER_PREFETCH",
    "DIRECT_REPLY_TO",
    "FEATURES",
    "connection_errors",
    "routing_key_of",
    "transport_error",
]

log = logging.getLogger("polybus.rabbitmq")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_SERVER_PREFETCH = 100
"""Server prefetch when none is given; it only matters with ``no_ack=False`` (RabbitMQ
ignores prefetch for auto-ack consumers). NestJS uses 0 (unlimited)."""

FEATURES = Features(
    name="rabbitmq",
    unknown_pattern="error",
    competing_consumers=True,
    durable_events=True,
    headers=True,
    dead_letter=True,
    isolation_option="queue",
    durable_options={"no_ack": False, "persistent": True},
)


def connection_errors() -> tuple[type[BaseException], ...]:
    """The exceptions by which aio-pika reports a failed connection, channel or timeout
    (imported on first use: importing polybus must not import aio-pika)."""
    import aio_pika

    return (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, asyncio.TimeoutError)


def transport_error(what: str, exc: BaseException) -> TransportError:
    return TransportError(f"RabbitMQ {what} failed: {describe_error(exc)}")


def routing_key_of(pattern: Any) -> str:
    """The routing key NestJS publishes a pattern with: a string as is, anything else as
    ``JSON.stringify`` writes it (the caller's key order, not the sorted route)."""
    if isinstance(pattern, str):
        key = pattern
    elif isinstance(pattern, (int, float)) and not isinstance(pattern, bool):
        key = js_number(pattern)
    else:
        key = json.dumps(pattern, separators=(",", ":"), ensure_ascii=False)
    if len(key.encode()) > 255:
        raise ProtocolError(f"RabbitMQ routing keys are at most 255 bytes: {key[:40]!r}...")
    return key
