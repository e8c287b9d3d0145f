"""The client half: one connection; a reply subscription per route, kept for its lifetime.

Before the first request to a route the client subscribes to ``<route>/reply`` and waits
for the SUBACK; the subscription then stays until the client closes (and is restored on
each reconnection before anything is published), so a publish never races an unsubscribe
(NestJS's reference-counted reply subscriptions hang under load because of that race).
"""

from __future__ import annotations

import asyncio
import time

import aiomqtt

from polybus.abc import Release, ReplySink, no_release
from polybus.errors import PolybusError, TransportError
from polybus.packets import Event, Request, encode_event, encode_request, merge_headers, read_reply
from polybus.serializers import Serializer

from ._common import FEATURES, Link, publish_properties
from ._options import MqttOptions
from ._record import record_options

__all__ = ["REPLY_SUFFIX", "MqttClientTransport"]

REPLY_SUFFIX = "/reply"
"""NestJS answers a request on ``<topic>/reply`` (``.reply`` on Redis and Kafka)."""


class _ReplySubscription:
    """One ``<route>/reply`` subscription; ``ready`` is its SUBACK in link session
    ``session``."""

    __slots__ = ("ready", "session", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.ready: asyncio.Future[None] | None = None
        self.session = -1


class MqttClientTransport:
    """Requests and events over one MQTT connection."""

    features = FEATURES

    def __init__(self, options: MqttOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._link: Link | None = None
        self._replies: dict[str, _ReplySubscription] = {}
        self._v5 = options.protocol_version == 5
        self._metadata = options.send_metadata and not self._v5

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        link = Link(self.options, self._on_message, self._restore, self._lost, sink.on_status)
        await link.connect()
        self._link = link

    def _on_message(self, message: aiomqtt.Message) -> None:
        sink = self._sink
        payload = message.payload
        if sink is not None and isinstance(payload, (bytes, bytearray)):
            # the request's id is inside the body: an unreadable reply is dropped
            limit = self.options.max_message_bytes
            read_reply(sink, self._serializer, payload, limit, message.topic.value)

    async def _restore(self, client: aiomqtt.Client) -> None:
        """On each (re)connection, before anything is published: every reply topic."""
        link = self._link
        entries = list(self._replies.values())
        if link is None or not entries:
            return
        await link.subscribe(client, [(entry.topic, 0) for entry in entries])
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        for entry in entries:
            entry.ready, entry.session = done, link.session

    def _lost(self, exc: PolybusError) -> None:
        if self._sink is not None:
            self._sink.on_connection_lost(exc)

    async def request(self, request: Request) -> Release:
        link = self._link
        if link is None:
            raise TransportError("MQTT client is closed")
        options = self.options
        body = options.check_size(
            encode_request(self._serializer, request, metadata=self._metadata)
        )
        client = link.client
        if client is None:
            deadline = request.deadline
            client = await link.wait_up(None if deadline is None else deadline - time.time())
        route = request.route
        entry = self._replies.get(route)
        if entry is None:
            entry = self._replies[route] = _ReplySubscription(route + REPLY_SUFFIX)
        if entry.session != link.session or not _succeeded(entry.ready):
            await self._subscribe(entry, link, client)
        qos, retain = record_options(request.record, options.qos)
        properties = None
        if self._v5:
            headers = merge_headers(request.headers, deadline=request.deadline)
            properties = publish_properties(options, headers)
        await link.publish(route, body, qos, properties, retain)
        return no_release

    async def _subscribe(
        self, entry: _ReplySubscription, link: Link, client: aiomqtt.Client
    ) -> None:
        ready = entry.ready
        if ready is None or entry.session != link.session or _failed(ready):
            ready = entry.ready = asyncio.ensure_future(link.subscribe(client, [(entry.topic, 0)]))
            entry.session = link.session
        await asyncio.shield(ready)  # shared: one caller's cancel must not cancel it

    async def publish_event(self, event: Event) -> None:
        link = self._link
        if link is None:
            raise TransportError("MQTT client is closed")
        options = self.options
        body = options.check_size(encode_event(self._serializer, event, metadata=self._metadata))
        qos, retain = record_options(event.record, options.qos)
        properties = publish_properties(options, event.headers) if self._v5 else None
        await link.publish(event.route, body, qos, properties, retain)

    async def close(self) -> None:
        link, self._link = self._link, None
        self._sink = None
        self._replies.clear()
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        return f"MqttClientTransport({self.options.address})"


def _failed(fut: asyncio.Future[None]) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None)


def _succeeded(fut: asyncio.Future[None] | None) -> bool:
    return fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None
