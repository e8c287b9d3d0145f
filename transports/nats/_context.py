"""The context of one NATS message, and decoding what arrived."""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from polybus.abc import Context
from polybus.errors import describe_error
from polybus.packets import (
    DEAD_LETTER_ERROR,
    DEAD_LETTER_ORIGIN,
    Incoming,
    Reply,
    encode_reply,
    parse_deadline,
    read_incoming,
)
from polybus.serializers import Serializer

from ._common import ERRORS, PUBLISH
from ._jetstream import publish_acknowledged, settle_stream_message
from ._options import NatsOptions

__all__ = ["NatsContext", "deadline_of", "decode_message"]


class NatsContext(Context):
    """Context of a NATS message.

    - ``pattern``: the route the handler subscribed to (may contain wildcards)
    - ``subject``: the subject the message was published to
    - ``reply``: the reply subject (``""`` for events)
    - ``headers``: the message's NATS headers (``None`` when it had none)
    - ``msg``: the raw ``nats.aio.msg.Msg``

    In JetStream mode an event's :meth:`settle` acknowledges it (``ok``) or terminates
    it (no redelivery); :meth:`dead_letter` publishes through JetStream.
    """

    __slots__ = ("_js", "_nc", "_on_settle", "_options", "_serializer", "msg")
    transport_name = "nats"

    def __init__(
        self,
        incoming: Incoming,
        deadline: float | None,
        msg: Msg,
        nc: NatsClient,
        serializer: Serializer,
        options: NatsOptions,
        js: JetStreamContext | None = None,
        on_settle: Callable[[Msg], None] | None = None,
    ) -> None:
        super().__init__(incoming.pattern, incoming.data, incoming.id, msg.headers, deadline)
        self.msg = msg
        self._nc = nc
        self._serializer = serializer
        self._options = options
        self._js = js
        self._on_settle = on_settle

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def reply(self) -> str:
        return self.msg.reply

    async def send_reply(self, reply: Reply) -> None:
        subject = self.msg.reply
        nc = self._nc
        if not subject or nc.is_closed:
            return
        body = encode_reply(self._serializer, reply)
        try:
            await nc.publish(subject, body)
        except ERRORS.catches as exc:
            raise ERRORS.error(exc, PUBLISH, len(body), subject) from exc

    async def settle(self, ok: bool) -> None:
        on_settle, self._on_settle = self._on_settle, None
        if on_settle is None:  # core NATS: nothing to settle
            return
        on_settle(self.msg)
        await settle_stream_message(self.msg, ok)

    async def dead_letter(self, destination: str, error: BaseException) -> None:
        msg, nc = self.msg, self._nc
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        headers[DEAD_LETTER_ERROR] = " ".join(describe_error(error).splitlines())
        headers[DEAD_LETTER_ORIGIN] = msg.subject
        if self._js is not None:
            await publish_acknowledged(
                nc, self._js, destination, msg.data, headers, self._options.publish_timeout
            )
            return
        with ERRORS(PUBLISH, len(msg.data), destination):
            await nc.publish(destination, msg.data, headers=headers)
            await nc.flush(timeout=max(int(self._options.publish_timeout), 1))


def decode_message(msg: Msg, route: str, serializer: Serializer, limit: int) -> Incoming | None:
    """The message's envelope, or ``None`` (logged) when it is too large or undecodable."""
    return read_incoming(serializer, msg.data, limit, repr(msg.subject), channel=route)


def deadline_of(msg: Msg, incoming: Incoming) -> float | None:
    headers = msg.headers
    if headers:
        return parse_deadline(headers)
    # a client without headers may send it in NestJS v12's body ``metadata``
    return parse_deadline(incoming.metadata) if incoming.metadata else None
