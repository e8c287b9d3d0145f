"""The client half: publishes to the service queue; replies come by direct reply-to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polybus.abc import ConnectionStatus, Release, ReplySink, no_release
from polybus.config import redact_url
from polybus.errors import ProtocolError, TransportError
from polybus.packets import (
    Event,
    Request,
    decode_reply,
    encode_event,
    encode_request,
    merge_headers,
)
from polybus.serializers import Serializer

from ._common import FEATURES, connection_errors, log, routing_key_of, transport_error
from ._frames import Properties
from ._link import Link
from ._options import RabbitMQOptions

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage

__all__ = ["RabbitMQClientTransport"]


class RabbitMQClientTransport:
    """Publishes to the service queue; replies arrive by direct reply-to on the same channel."""

    features = FEATURES

    def __init__(self, options: RabbitMQOptions, serializer: Serializer) -> None:
        options.validate()
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._link: Link | None = None
        self._base_headers: dict[str, str] = dict(options.headers or {})
        self._persistent = options.persistent
        self._reply_to = options.reply_queue
        self._by_pattern = options.publishes_to_exchange
        self._exchange = options.exchange_name

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        link = Link(
            self.options,
            self.options.prefetch_count or 0,
            self._lost,
            self._consume_replies,
            self._reconnected,
            confirm=self.options.confirms,
        )
        await link.open()
        self._link = link

    async def _consume_replies(self, raw: Any) -> None:
        await raw.basic_consume(self.options.reply_queue, self._on_reply, no_ack=True)

    def _lost(self, exc: BaseException | None) -> None:
        sink = self._sink
        if sink is None:
            return
        sink.on_status(ConnectionStatus.RECONNECTING)
        reason = f": {exc}" if exc else ""
        sink.on_connection_lost(TransportError(f"RabbitMQ channel closed{reason}"))

    def _reconnected(self) -> None:
        if self._sink is not None:
            self._sink.on_status(ConnectionStatus.CONNECTED)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        sink = self._sink
        if sink is None:
            return
        body = message.body
        if len(body) > self.options.max_message_bytes:
            log.warning("dropping reply of %d bytes: over max_message_bytes", len(body))
            return
        try:
            reply = decode_reply(self._serializer, body)
        except ProtocolError as exc:
            log.warning("dropping undecodable reply: %s", exc)
            return
        cid = message.header.properties.correlation_id
        if cid is not None:
            reply.id = cid
        sink.on_reply(reply)

    def _props(
        self,
        record: Any,
        headers: dict[str, str] | None,
        deadline: float | None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> Properties:
        """Properties of one publish: client headers < record headers < the deadline."""
        merged = merge_headers(self._base_headers, headers, deadline=deadline)
        persistent = self._persistent
        priority = expiration = None
        if record is not None:
            if record.persistent is not None:
                persistent = record.persistent
            priority = record.priority
            if record.expiration_ms is not None:
                expiration = str(int(record.expiration_ms))
        return Properties(
            correlation_id, reply_to, 2 if persistent else 1, priority, expiration, merged
        )

    async def request(self, request: Request) -> Release:
        link = self._link
        if link is None:
            raise TransportError("RabbitMQ client is not connected")
        body = self.options.check_size(encode_request(self._serializer, request))
        props = self._props(
            request.record, request.headers, request.deadline, request.id, self._reply_to
        )
        await self._publish(link, body, props, request.pattern)
        return no_release

    async def publish_event(self, event: Event) -> None:
        link = self._link
        if link is None:
            raise TransportError("RabbitMQ client is not connected")
        body = self.options.check_size(encode_event(self._serializer, event))
        props = self._props(event.record, event.headers, None)
        await self._publish(link, body, props, event.pattern)

    async def _publish(self, link: Link, body: bytes, props: Properties, pattern: Any) -> None:
        """Publish to the service queue, or by pattern to the exchange (NestJS with
        ``wildcards`` or ``fanout``), once the link is up (confirmed when configured)."""
        exchange, routing_key = "", self.options.queue
        if self._by_pattern:
            exchange, routing_key = self._exchange, routing_key_of(pattern)
        if not link.ready.is_set():
            await link.wait_ready()
        if not link.confirm:
            link.publish(routing_key, body, props, exchange)
            await link.drain()
            return
        confirmation = link.publish_confirmed(routing_key, body, props, exchange)
        try:  # a confirm implies the write; a write that fails closes the channel: fails it
            await confirmation
        except connection_errors() as exc:  # nacked
            raise transport_error("publish", exc) from exc

    async def close(self) -> None:
        link, self._link = self._link, None
        self._sink = None
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        url = self._link.url if self._link else redact_url(self.options.urls[0])
        return f"RabbitMQClientTransport({url} queue={self.options.queue!r})"
