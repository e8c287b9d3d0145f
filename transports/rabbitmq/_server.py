"""The server half: consumes the service queue; replies go to each request's ``reply_to``."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from polybus.abc import ConnectionReporter, ConnectionStatus, Context, MessageSink, RouteSpec
from polybus.config import redact_url
from polybus.errors import ProtocolError, TransportError
from polybus.packets import Reply, encode_reply, parse_deadline, read_incoming
from polybus.patterns import WildcardRoutes, route_from_wire, to_route
from polybus.serializers import Serializer

from ._common import DEFAULT_SERVER_PREFETCH, ERRORS, FEATURES, log, routing_key_of
from ._dead_letter import dead_letter
from ._frames import Properties
from ._link import Link
from ._options import RabbitMQOptions

if TYPE_CHECKING:
    import aio_pika.abc
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic

__all__ = ["RabbitMQContext", "RabbitMQServerTransport"]


class RabbitMQContext(Context):
    """Context of a RabbitMQ message.

    - ``delivered``: the raw aiormq ``DeliveredMessage``; ``properties``: its AMQP properties
    - ``message``: the aio-pika ``IncomingMessage`` (built on first access)
    - ``channel``: the aio-pika channel the message arrived on
    - ``headers``: the AMQP headers as strings; ``reply_to``, ``correlation_id``
    - ``routing_key``: the key it was published with (with ``wildcards``: the pattern as
      the client wrote it; ``pattern`` is then the ``*``/``#`` route that matched it)
    - ``ack()`` / ``nack(requeue=False)``: settle the message yourself (only with the server
      option ``no_ack=False``; no-ops otherwise). Without them, the server acks once the
      handler succeeded and rejects (no requeue) when it failed.
    """

    __slots__ = ("_message", "_server", "_settled", "correlation_id", "delivered", "reply_to")
    transport_name = "rabbitmq"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        headers: dict[str, str] | None,
        deadline: float | None,
        delivered: DeliveredMessage,
        server: RabbitMQServerTransport,
    ) -> None:
        super().__init__(pattern, data, id, headers, deadline)
        self.delivered = delivered
        props = delivered.header.properties
        self.reply_to: str | None = props.reply_to
        self.correlation_id: str | None = props.correlation_id
        self._server = server
        self._message: aio_pika.abc.AbstractIncomingMessage | None = None
        self._settled = server.options.no_ack

    @property
    def routing_key(self) -> str | None:
        return self.delivered.routing_key

    @property
    def properties(self) -> Basic.Properties:
        return self.delivered.header.properties

    @property
    def message(self) -> aio_pika.abc.AbstractIncomingMessage:
        if self._message is None:
            from aio_pika import IncomingMessage

            self._message = IncomingMessage(self.delivered, no_ack=self._server.options.no_ack)
        return self._message

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel | None:
        return self._server._link.channel if self._server._link else None

    def _claim(self) -> bool:
        if self._settled or (self._message is not None and self._message.processed):
            return False
        self._settled = True
        return not self.delivered.channel.is_closed

    async def ack(self) -> None:
        if self._claim():
            await self._settle(True, False)

    async def nack(self, requeue: bool = False) -> None:
        if self._claim():
            await self._settle(False, requeue)

    async def _settle(self, ok: bool, requeue: bool) -> None:
        link = self._server._link
        delivered = self.delivered
        if link is not None:
            link.settle(delivered.channel, delivered.delivery_tag or 0, ok, requeue)

    async def settle(self, ok: bool) -> None:
        if self._claim():
            await self._settle(ok, False)

    async def dead_letter(self, destination: str, error: BaseException) -> None:
        """Publish this message as it arrived, with ``x-polybus-error`` and
        ``x-polybus-origin`` (the service queue) headers, to the durable queue
        ``destination`` through the default exchange, confirmed by the broker."""
        server = self._server
        link = server._link
        if link is None:
            raise TransportError("RabbitMQ server is closed")
        await dead_letter(link, self.delivered, server.options.queue, destination, error)

    async def send_reply(self, reply: Reply) -> None:
        reply_to = self.reply_to
        if reply_to is None:
            return
        server = self._server
        body = server.options.check_size(encode_reply(server._serializer, reply, with_id=False))
        await server._reply(reply_to, self.correlation_id, body)


class RabbitMQServerTransport(ConnectionReporter):
    """Consumes the service queue; replies go to each request's ``reply_to``."""

    features = FEATURES

    def __init__(self, options: RabbitMQOptions, serializer: Serializer) -> None:
        options.validate()
        self.options = options
        self._serializer = serializer
        self._sink: MessageSink | None = None
        self._link: Link | None = None
        self._consumer_tag: str | None = None
        self._stopping = False
        self._last_link: Link | None = None
        self._wildcards: WildcardRoutes | None = None

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._sink = sink
        self._stopping = False
        prefetch = self.options.prefetch_count
        names = [spec.route for spec in routes]
        wildcards = WildcardRoutes(names, "*#", matches_topic)
        self._wildcards = wildcards if self.options.wildcards and wildcards.wildcards else None
        link = Link(
            self.options,
            DEFAULT_SERVER_PREFETCH if prefetch is None else prefetch,
            self._lost,
            self._consume,
            lambda: self.report_connection(ConnectionStatus.CONNECTED),
            routes=names,
        )
        self._link = link
        try:
            await link.open()
        except BaseException:
            self._link = None
            await link.close()  # a cancel during the channel setup left the connection open
            raise

    async def _consume(self, raw: Any) -> None:
        if self._stopping:
            return
        ok = await raw.basic_consume(
            self.options.queue, self._on_message, no_ack=self.options.no_ack
        )
        self._consumer_tag = ok.consumer_tag
        raw.on_consumer_cancel_callbacks.add(self._cancelled)

    def _cancelled(self, frame: Any) -> None:
        if not self._stopping:
            log.warning(
                "RabbitMQ cancelled the consumer of %r (queue deleted?)", self.options.queue
            )

    def _lost(self, exc: BaseException | None) -> None:
        if not self._stopping:
            log.warning("RabbitMQ channel closed (%s); reconnecting", exc)
            self.report_connection(ConnectionStatus.RECONNECTING)

    async def _on_message(self, message: DeliveredMessage) -> None:
        sink = self._sink
        if sink is None or self._stopping:
            return  # not acked: the broker redelivers it to another consumer
        body = message.body
        options = self.options
        where = f"queue {options.queue!r}"
        incoming = read_incoming(self._serializer, body, options.max_message_bytes, where)
        if incoming is None:
            await self._reject(message)
            return
        raw_headers = message.header.properties.headers
        headers = _text_headers(raw_headers) if raw_headers else None
        pattern = incoming.pattern
        if self._wildcards is not None:
            pattern = _wildcard_route(self._wildcards, pattern)
        await sink(
            RabbitMQContext(
                pattern,
                incoming.data,
                incoming.id,
                headers,
                parse_deadline(headers),
                message,
                self,
            )
        )

    async def _reject(self, message: DeliveredMessage) -> None:
        if not self.options.no_ack and self._link is not None:
            self._link.settle(message.channel, message.delivery_tag or 0, False)

    async def _reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        """Publish a reply; while the channel is being restored, wait (``connect_timeout``)
        for it: our consumer is back before the link is marked ready, so a request can be
        handled, and answered, in between."""
        link = self._link
        if link is None:
            log.debug("dropping a reply: the RabbitMQ server is closed")
            return
        try:
            if not link.ready.is_set():
                await link.wait_ready()
            link.publish(reply_to, body, Properties(correlation_id))
        except TransportError as exc:  # the caller's request failed with the connection
            log.debug("dropping a reply: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
        link, tag = self._link, self._consumer_tag
        self._consumer_tag = None
        if link is None or tag is None or not link.ready.is_set():
            return
        with contextlib.suppress(Exception):
            await link.raw.basic_cancel(tag)

    async def close(self) -> None:
        await self.stop()
        link, self._link = self._link, None
        self._sink = None
        if link is not None:
            self._last_link = link
            await link.close()

    async def delete_resources(self) -> None:
        """Delete the service queue (and every message in it)."""
        link = self._link or self._last_link
        if link is None:
            link = Link(self.options, 0, lambda exc: None, _no_restore)
        with ERRORS("RabbitMQ deleting queue %r failed", self.options.queue):
            await link.delete_queue()

    def __repr__(self) -> str:
        url = self._link.url if self._link else redact_url(self.options.urls[0])
        return f"RabbitMQServerTransport({url} queue={self.options.queue!r})"


def matches_topic(pattern: str, key: str) -> bool:
    """Whether a ``*``/``#`` handler pattern matches a pattern string, as NestJS's
    ``ServerRMQ.matchRmqPattern`` decides (``.``-separated words; ``*`` one word, ``#``
    the rest only as the last word; not the broker's own topic matching)."""
    if not key:
        return pattern == "#"
    words = pattern.split(".")
    keys = key.split(".")
    last = len(words) - 1
    for i, word in enumerate(words):
        current = keys[i] if i < len(keys) else ""
        if not current and not word:
            continue
        if not current and word != "#":
            return False
        if word == "#":
            return i == last
        if word not in ("*", current):
            return False
    return len(words) == len(keys)


def _wildcard_route(routes: WildcardRoutes, pattern: Any) -> Any:
    """The pattern a message is dispatched on under ``wildcards``: its own when a handler
    route equals its route, else the first ``*``/``#`` route matching it as a string."""
    try:
        route = route_from_wire(pattern) if isinstance(pattern, str) else to_route(pattern)
        if route in routes.exact:
            return pattern
        matched = routes.match(routing_key_of(pattern))
    except (TypeError, ValueError, RecursionError, ProtocolError):
        # unroutable, or no routing key: the core's no-handler path answers it
        return pattern
    return pattern if matched is None else matched


async def _no_restore(raw: Any) -> None:
    pass


def _text_headers(raw: Mapping[str, Any]) -> dict[str, str]:
    """AMQP header values as text (bytes decoded as UTF-8), as handlers see them."""
    return {
        key: value.decode("utf-8", "replace")
        if isinstance(value, (bytes, bytearray))
        else str(value)
        for key, value in raw.items()
    }
