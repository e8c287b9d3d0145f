"""JetStream for events (opt-in, ``?jetstream=true``): the stream, durable consumers, and
publishing that resolves only on the stream's acknowledgement (PubAck).

NestJS has no JetStream transport (nestjs/nest#13198): the body stays the NestJS event
envelope, but only polybus services read it from the stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from dataclasses import replace

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js import errors as js_errors

from polybus.abc import Features
from polybus.errors import ConfigError, TransportError, describe_error

from ._common import ERRORS, FEATURES, PUBLISH, log
from ._options import NatsOptions

__all__ = [
    "JETSTREAM_FEATURES",
    "consumer_config",
    "durable_name",
    "ensure_stream",
    "features_for",
    "publish_acknowledged",
    "settle_stream_message",
    "stream_name",
]

JETSTREAM_FEATURES: Features = replace(
    FEATURES,
    name="nats-jetstream",
    durable_events=True,
    isolation_option="durable",
)
"""A JetStream URL: events are kept; instances sharing a durable name compete for them
(requests stay core NATS: every server gets each one unless they share a ``queue``)."""


def features_for(options: NatsOptions) -> Features:
    return JETSTREAM_FEATURES if options.jetstream else FEATURES


_MSG_ID = "Nats-Msg-Id"
_OVERLAP = 10065  # JetStream: "subjects overlap with an existing stream"
_NAME_IN_USE = 10058  # JetStream: "stream name already in use" (another instance raced us)
_PERMANENT = (
    nats_errors.MaxPayloadError,
    nats_errors.BadSubjectError,
    nats_errors.BadHeaderError,
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe(name: str) -> str:
    """A stream or consumer name from any string (no ``.``, ``*``, ``>``, spaces)."""
    cleaned = _UNSAFE.sub("_", name)
    if cleaned == name:
        return name
    return f"{cleaned}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def stream_name(options: NatsOptions) -> str:
    return _safe(options.stream or options.durable_base)


def durable_name(base: str, route: str) -> str:
    """One durable consumer per service and event route."""
    return _safe(f"{base}-{route}")


def consumer_config(options: NatsOptions, durable: str, route: str) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=durable,
        name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subject=route,
        ack_wait=options.ack_wait,
        max_deliver=options.max_deliver,
    )


async def ensure_stream(
    js: JetStreamContext, name: str, subjects: list[str], max_age: float
) -> None:
    """Create the stream (file storage) or add the subjects it lacks."""
    for _ in range(2):
        try:
            info = await js.stream_info(name)
        except js_errors.NotFoundError:
            config = api.StreamConfig(
                name=name, subjects=subjects, storage=api.StorageType.FILE, max_age=max_age
            )
            try:
                await js.add_stream(config)
                return
            except js_errors.APIError as exc:
                if exc.err_code == _NAME_IN_USE:
                    continue
                raise _stream_error(exc, name, subjects) from exc
        have = list(info.config.subjects or [])
        missing = [s for s in subjects if s not in have]
        if not missing:
            return
        try:
            await js.update_stream(replace(info.config, subjects=have + missing))
            return
        except js_errors.APIError as exc:
            raise _stream_error(exc, name, subjects) from exc
    raise TransportError(f"cannot create JetStream stream {name!r}")


def _stream_error(exc: js_errors.APIError, name: str, subjects: list[str]) -> Exception:
    if exc.err_code == _OVERLAP:
        return ConfigError(
            f"JetStream stream {name!r} cannot cover {subjects}: another stream covers "
            "some of these subjects (set the `stream` option to that stream's name)"
        )
    return TransportError(f"cannot set up JetStream stream {name!r}: {describe_error(exc)}")


async def publish_acknowledged(
    nc: NatsClient,
    js: JetStreamContext,
    subject: str,
    body: bytes,
    headers: dict[str, str] | None,
    timeout: float,
) -> None:
    """Publish until the stream acknowledges, retrying through reconnects for ``timeout``
    seconds; one message id for every attempt, so the stream keeps one copy."""
    headers = {**(headers or {}), _MSG_ID: uuid.uuid4().hex}
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        left = end - loop.time()
        try:
            await js.publish(subject, body, timeout=max(min(left, 2.0), 0.1), headers=headers)
            return
        except js_errors.NoStreamResponseError as exc:
            if nc.is_connected and await _jetstream_is_up(js):
                raise TransportError(
                    f"no JetStream stream covers {subject!r} (a server creates its stream "
                    "when it starts listening)"
                ) from exc
            cause: Exception = exc
        except js_errors.ServiceUnavailableError as exc:  # JetStream is recovering
            cause = exc
        except js_errors.APIError as exc:
            raise TransportError(
                f"JetStream refused the event on {subject!r}: {describe_error(exc)}"
            ) from exc
        except _PERMANENT as exc:
            raise ERRORS.error(exc, PUBLISH, len(body), subject) from exc
        except (nats_errors.TimeoutError, nats_errors.ConnectionReconnectingError) as exc:
            cause = exc
        except nats_errors.Error as exc:
            if nc.is_closed:
                raise TransportError("NATS connection is closed") from exc
            cause = exc
        if loop.time() >= end:
            raise TransportError(
                f"JetStream did not acknowledge the event on {subject!r} within "
                f"{timeout:g}s: {describe_error(cause)}"
            ) from cause
        await asyncio.sleep(min(0.1, max(end - loop.time(), 0)))


async def _jetstream_is_up(js: JetStreamContext) -> bool:
    try:
        await js.account_info()
    except (nats_errors.Error, asyncio.TimeoutError):
        return False
    return True


async def settle_stream_message(msg: Msg, ok: bool) -> None:
    """Ack (``ok``) or terminate (no redelivery); a failure is logged: the stream then
    delivers the message again after ``ack_wait``."""
    try:
        if ok:
            await msg.ack()
        else:
            await msg.term()
    except nats_errors.Error as exc:
        log.warning(
            "could not settle a JetStream message on %r (delivered again after ack_wait): %r",
            msg.subject,
            exc,
        )
