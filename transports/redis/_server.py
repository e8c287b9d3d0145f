"""The server half: every route on one subscriber connection, replies on one publisher.

The server subscribes to every handler route (``PSUBSCRIBE`` with ``wildcards``) and
replies on ``<channel the request arrived on>.reply``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from polybus.abc import ConnectionReporter, MessageSink, PublishedReplyContext, RouteSpec
from polybus.packets import read_incoming
from polybus.serializers import Serializer

from ._common import FEATURES
from ._link import Link
from ._options import RedisOptions

__all__ = ["RedisContext", "RedisServerTransport"]


class RedisContext(PublishedReplyContext):
    """Context of a Redis message.

    ``channel`` is the channel the message arrived on (NestJS ``RedisContext.getChannel()``);
    with ``wildcards`` ``pattern`` is the subscribed pattern that matched it. ``headers`` is
    the packet's NestJS v12 ``metadata`` (``RedisContext.getMetadata()``, ``None`` without
    it); ``deadline`` comes from its ``x-polybus-deadline`` entry. The reply goes to
    ``<channel>.reply``.
    """

    __slots__ = ("channel",)
    transport_name = "redis"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        channel: str,
        reply_channel: bytes,
        server: RedisServerTransport,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(pattern, data, id, metadata, server, reply_channel)
        self.channel = channel


class RedisServerTransport(ConnectionReporter):
    """Receives every route on one subscriber connection; replies on one publisher."""

    features = FEATURES

    def __init__(self, options: RedisOptions, serializer: Serializer) -> None:
        self.options = options
        self.serializer = serializer
        self._sink: MessageSink | None = None
        self._link: Link | None = None
        self._routes: dict[bytes, tuple[str, bytes]] = {}  # channel → (route, reply channel)

    async def publish_reply(self, destination: bytes, body: bytes) -> None:
        """Publish on the reply channel ``destination``, with this loop iteration's batch."""
        link = self._link
        if link is None or not link.up:
            return  # the caller was failed when the connection dropped
        pipe = link.publisher()
        pipe.publish(destination, body)
        if pipe.backlogged:
            await asyncio.shield(pipe.flushed())

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._routes = {
            spec.route.encode(): (spec.route, (spec.route + ".reply").encode()) for spec in routes
        }
        self._sink = sink
        link = Link(self.options, self._on_message, self._restore, on_status=self.report_connection)
        try:
            await link.connect()
        except BaseException:
            self._sink = None
            raise
        self._link = link

    async def _restore(self, link: Link) -> None:
        if self._routes and self._sink is not None:
            await link.subscribe(list(self._routes), pattern=self.options.wildcards)

    def _on_message(
        self, channel: bytes, body: bytes, pattern: bytes | None
    ) -> Awaitable[None] | None:
        sink = self._sink
        if sink is None:
            return None
        target = self._routes.get(channel if pattern is None else pattern)
        if target is None:
            return None
        route, reply_channel = target
        name = route
        if pattern is not None:
            name = channel.decode("utf-8", "replace")
            reply_channel = channel + b".reply"
        limit = self.options.max_message_bytes
        incoming = read_incoming(self.serializer, body, limit, repr(name), channel=route)
        if incoming is None:
            return None
        return sink(
            RedisContext(
                incoming.pattern,
                incoming.data,
                incoming.id,
                name,
                reply_channel,
                self,
                incoming.metadata,
            )
        )

    async def stop(self) -> None:
        self._sink = None
        link = self._link
        if link is not None and link.up:
            link.unsubscribe(list(self._routes), pattern=self.options.wildcards)

    async def close(self) -> None:
        self._sink = None
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        return f"RedisServerTransport({self.options.address})"
