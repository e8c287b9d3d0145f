"""The server half: one subscription per handler route, replies to each reply subject.

The route is what the server dispatches on (wildcards included); no queue group unless
``queue`` is set (server option, or per handler: ``@app.message_pattern(p, queue="q")``);
replies go out without headers, like NestJS's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from polybus.abc import Context, MessageSink, RouteSpec
from polybus.errors import ConfigError, ProtocolError, TransportError, describe_error
from polybus.packets import Reply, decode_incoming, encode_reply, parse_deadline
from polybus.serializers import Serializer

from ._common import (
    FEATURES,
    ConnectionCallbacks,
    close_connection,
    log,
    open_connection,
    publish_error,
)
from ._options import NatsOptions

__all__ = ["NatsContext", "NatsServerTransport"]


class NatsContext(Context):
    """Context of a NATS message.

    - ``pattern``: the route the handler subscribed to (may contain wildcards)
    - ``subject``: the subject the message was published to
    - ``reply``: the reply subject (``""`` for events)
    - ``headers``: the message's NATS headers (``None`` when it had none)
    - ``msg``: the raw ``nats.aio.msg.Msg``
    """

    __slots__ = ("_nc", "_serializer", "msg")
    transport_name = "nats"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        headers: dict[str, str] | None,
        deadline: float | None,
        msg: Msg,
        nc: NatsClient,
        serializer: Serializer,
    ) -> None:
        super().__init__(pattern, data, id, headers, deadline)
        self.msg = msg
        self._nc = nc
        self._serializer = serializer

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
        except nats_errors.Error as exc:
            raise publish_error(exc, subject, nc, len(body)) from exc


class NatsServerTransport(ConnectionCallbacks):
    features = FEATURES

    def __init__(self, options: NatsOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._nc: NatsClient | None = None
        self._subs: list[Subscription] = []

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._closing = False
        nc = self._nc
        if nc is None:
            nc = self._nc = await open_connection(self.options, self)
        try:
            for spec in routes:
                queue = spec.options.get("queue") or self.options.queue or ""
                self._subs.append(
                    await nc.subscribe(
                        spec.route,
                        queue=queue,
                        cb=self._receiver(spec.route, sink, nc),
                        pending_msgs_limit=self.options.pending_msgs_limit,
                        pending_bytes_limit=self.options.pending_bytes_limit,
                    )
                )
            await nc.flush()  # the server has every SUB: messages published now reach us
        except nats_errors.BadSubjectError as exc:
            await self.close()
            raise ConfigError(
                f"cannot subscribe: {describe_error(exc)} (a route must be a valid NATS subject)"
            ) from exc
        except (nats_errors.Error, OSError, asyncio.TimeoutError) as exc:
            await self.close()
            raise TransportError(
                f"cannot subscribe on NATS at {self.options.describe()}: {describe_error(exc)}"
            ) from exc

    def _receiver(self, route: str, sink: MessageSink, nc: NatsClient) -> Any:
        serializer = self._serializer
        limit = self.options.max_message_bytes

        async def receive(msg: Msg) -> None:
            data = msg.data
            if len(data) > limit:
                log.warning(
                    "dropping a %d-byte message on %r: above max_message_bytes=%d",
                    len(data),
                    msg.subject,
                    limit,
                )
                return
            try:
                incoming = decode_incoming(serializer, data, channel=route)
            except ProtocolError as exc:
                log.warning("dropping an undecodable message on %r: %s", msg.subject, exc)
                return
            headers = msg.headers
            if headers:
                deadline = parse_deadline(headers)
            else:  # a client without headers may send it in NestJS v12's body ``metadata``
                deadline = parse_deadline(incoming.metadata) if incoming.metadata else None
            await sink(
                NatsContext(
                    incoming.pattern,
                    incoming.data,
                    incoming.id,
                    headers,
                    deadline,
                    msg,
                    nc,
                    serializer,
                )
            )

        return receive

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        for sub in subs:
            try:
                await sub.unsubscribe()
            except nats_errors.Error as exc:
                log.debug("unsubscribe failed: %r", exc)

    async def close(self) -> None:
        await self.stop()
        self._closing = True
        nc, self._nc = self._nc, None
        await close_connection(nc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS server connection to %s lost; reconnecting", self.options.describe())

    async def _on_reconnected(self) -> None:
        if not self._closing:
            log.info("NATS server connection to %s restored", self.options.describe())

    def __repr__(self) -> str:
        return f"NatsServerTransport({self.options.describe()})"
