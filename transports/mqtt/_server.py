"""The server half: every handler route subscribed on one connection; replies to
``<topic the request arrived on>/reply`` at QoS 0, as NestJS.

A route with ``+``/``#`` is an MQTT topic filter: the message's topic is matched against
it and the handler of the filter gets the message. ``queue`` (server option, or per
handler: ``@app.message_pattern(p, queue="g")``) subscribes as ``$share/<queue>/<route>``
so that server instances share the messages instead of each getting all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import aiomqtt
from paho.mqtt.client import topic_matches_sub

from polybus.abc import ConnectionReporter, MessageSink, PublishedReplyContext, RouteSpec
from polybus.errors import ConfigError
from polybus.packets import read_incoming
from polybus.patterns import WildcardRoutes
from polybus.serializers import Serializer

from ._client import REPLY_SUFFIX
from ._common import FEATURES, Link, user_properties
from ._options import MqttOptions

__all__ = ["MqttContext", "MqttServerTransport"]


class MqttContext(PublishedReplyContext):
    """Context of an MQTT message.

    ``topic`` is the topic it arrived on (NestJS ``MqttContext.getTopic()``) and
    ``message`` the ``aiomqtt.Message`` (``getPacket()``); ``pattern`` is the handler's
    route, a topic filter when it has wildcards. ``headers`` are the MQTT 5 user
    properties, else the packet's NestJS v12 ``metadata``; ``deadline`` comes from its
    ``x-polybus-deadline`` entry. The reply goes to ``<topic>/reply``.
    """

    __slots__ = ("_server", "_session", "message", "topic")
    transport_name = "mqtt"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        headers: dict[str, str] | None,
        message: aiomqtt.Message,
        server: MqttServerTransport,
        session: int,
    ) -> None:
        topic = message.topic.value
        super().__init__(pattern, data, id, headers, server, topic)
        self.topic = topic
        self.message = message
        self._server = server
        self._session = session

    async def settle(self, ok: bool) -> None:
        """Acknowledge a QoS 1/2 message now that its handler is done (MQTT cannot reject:
        a failed one is acknowledged too, as a rejection without requeue)."""
        link = self._server._link
        if link is not None:
            link.ack(self.message, self._session)


class MqttServerTransport(ConnectionReporter):
    """Receives every route on one connection and replies on the same one."""

    features = FEATURES

    def __init__(self, options: MqttOptions, serializer: Serializer) -> None:
        self.options = options
        self.serializer = serializer
        self._sink: MessageSink | None = None
        self._link: Link | None = None
        self._subscriptions: list[tuple[str, int]] = []
        self._routes = WildcardRoutes((), "+#", topic_matches_sub)

    async def publish_reply(self, destination: str, body: bytes) -> None:
        """Publish on ``<destination topic>/reply`` at QoS 0, as NestJS."""
        link = self._link
        if link is not None and link.up:  # else the caller was failed when it dropped
            await link.publish(destination + REPLY_SUFFIX, body, 0)

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._subscriptions = [self._subscription(spec) for spec in routes]
        self._routes = WildcardRoutes((spec.route for spec in routes), "+#", topic_matches_sub)
        self._sink = sink
        link = Link(
            self.options,
            self._on_message,
            self._restore,
            on_status=self.report_connection,
            manual_ack=True,
        )
        self._link = link
        try:
            await link.connect()
        except BaseException:
            self._sink = self._link = None
            raise

    def _subscription(self, spec: RouteSpec) -> tuple[str, int]:
        options = spec.options
        qos = options.get("qos", self.options.qos)
        if qos not in (0, 1, 2):
            raise ConfigError(f"route {spec.route!r}: MQTT qos must be 0, 1 or 2, got {qos!r}")
        queue = options.get("queue") or self.options.queue
        return (f"$share/{queue}/{spec.route}" if queue else spec.route), qos

    async def _restore(self, client: aiomqtt.Client) -> None:
        link = self._link
        if link is not None and self._sink is not None:
            await link.subscribe(client, self._subscriptions)

    def _on_message(self, message: aiomqtt.Message) -> Awaitable[None] | None:
        sink, link = self._sink, self._link
        if sink is None or link is None:
            return None  # stopping: left unacknowledged, so the broker may deliver it again
        payload = message.payload
        topic = message.topic.value
        route = self._routes.route_of(topic)
        if route is None or not isinstance(payload, (bytes, bytearray)):
            link.ack(message, link.session)
            return None
        limit = self.options.max_message_bytes
        incoming = read_incoming(self.serializer, payload, limit, repr(topic), channel=route)
        if incoming is None:
            link.ack(message, link.session)
            return None
        headers = user_properties(message) or incoming.metadata
        context = MqttContext(
            incoming.pattern, incoming.data, incoming.id, headers, message, self, link.session
        )
        return sink(context)

    async def stop(self) -> None:
        self._sink = None
        link = self._link
        if link is not None and self.options.clean_session:
            # a persistent session keeps its subscriptions: the broker queues for it
            await link.unsubscribe([topic for topic, _ in self._subscriptions])

    async def close(self) -> None:
        self._sink = None
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        return f"MqttServerTransport({self.options.address})"
