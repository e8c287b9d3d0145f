"""The client half: reply channels shared by the pending requests on each route.

A request subscribes to ``<route>.reply`` and waits for the confirmation before it
publishes; one subscription per reply channel is shared by every pending request on it
(reference-counted) and kept for ``reply_linger`` seconds after the last one ends.
"""

from __future__ import annotations

import asyncio
import time

from polybus.abc import Release, ReplySink
from polybus.errors import PolybusError, TransportError
from polybus.packets import Event, Request, encode_event, encode_request, read_reply
from polybus.serializers import Serializer

from ._common import FEATURES
from ._link import Link
from ._options import RedisOptions

__all__ = ["RedisClientTransport"]


class _ReplyChannel:
    """One ``<route>.reply`` subscription, shared by the pending requests on that route."""

    __slots__ = ("channel", "idle_since", "live", "owner", "ready", "refs", "session")

    def __init__(self, owner: RedisClientTransport, channel: bytes) -> None:
        self.owner = owner
        self.channel = channel
        self.refs = 0
        self.ready: asyncio.Future[None] | None = None  # the SUBSCRIBE's confirmation
        self.session = -1  # the link session ``ready`` belongs to
        self.live = -1  # the link session in which the subscription is confirmed
        self.idle_since = 0.0

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.idle_since = time.monotonic()
            self.owner._schedule_sweep()


class RedisClientTransport:
    """Requests and events over one publisher and one subscriber connection."""

    features = FEATURES

    def __init__(self, options: RedisOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._link: Link | None = None
        self._replies: dict[str, _ReplyChannel] = {}
        self._channels: dict[str, bytes] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        link = Link(self.options, self._on_message, self._restore, self._lost, sink.on_status)
        await link.connect()
        self._link = link

    def _on_message(self, channel: bytes, body: bytes, pattern: bytes | None) -> None:
        sink = self._sink
        if sink is not None:
            # the request's id is inside the body: an unreadable reply is dropped
            read_reply(sink, self._serializer, body, self.options.max_message_bytes, channel)

    async def _restore(self, link: Link) -> None:
        """After a reconnection: subscribe again the reply channels still in use."""
        active = []
        for route, entry in list(self._replies.items()):
            if entry.refs > 0:
                active.append(entry)
            else:
                del self._replies[route]
        if active:
            ready = link.subscribe([entry.channel for entry in active])
            for entry in active:
                entry.ready, entry.session = ready, link.session
            await ready
            for entry in active:
                entry.live = link.session

    def _lost(self, exc: PolybusError) -> None:
        if self._sink is not None:
            self._sink.on_connection_lost(exc)

    def _channel(self, route: str) -> bytes:
        channel = self._channels.get(route)
        if channel is None:
            if len(self._channels) > 10_000:
                self._channels.clear()
            channel = self._channels[route] = route.encode()
        return channel

    async def request(self, request: Request) -> Release:
        link = self._link
        if link is None:
            raise TransportError("redis client is closed")
        options = self.options
        body = options.check_size(
            encode_request(self._serializer, request, metadata=options.send_metadata)
        )
        if not link.up:
            deadline = request.deadline
            await link.wait_up(None if deadline is None else deadline - time.time())
        route = request.route
        entry = self._replies.get(route)
        if entry is None:
            entry = self._replies[route] = _ReplyChannel(self, (route + ".reply").encode())
        entry.refs += 1
        try:
            if entry.live != link.session:
                await self._subscribe(entry, link)
            pipe = link.publisher()
        except BaseException:
            entry.release()
            raise
        pipe.publish(self._channel(route), body)
        if pipe.backlogged:
            await asyncio.shield(pipe.flushed())
        return entry.release

    async def _subscribe(self, entry: _ReplyChannel, link: Link) -> None:
        ready = entry.ready
        if ready is None or entry.session != link.session or _failed(ready):
            ready = entry.ready = link.subscribe([entry.channel])
            entry.session = link.session
        await asyncio.shield(ready)  # shared: one caller's cancel must not cancel it
        if entry.ready is ready and entry.session == link.session:
            entry.live = link.session

    def _schedule_sweep(self) -> None:
        if self._sweep is None and self._link is not None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.options.reply_linger, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Unsubscribe reply channels idle for ``reply_linger`` seconds, in one command."""
        self._sweep = None
        now = time.monotonic()
        linger = self.options.reply_linger
        link = self._link
        expired: list[bytes] = []
        next_due: float | None = None
        for route, entry in list(self._replies.items()):
            if entry.refs:
                continue
            due = entry.idle_since + linger
            if due <= now:
                del self._replies[route]
                if link is not None and entry.session == link.session and entry.ready is not None:
                    expired.append(entry.channel)
            elif next_due is None or due < next_due:
                next_due = due
        if expired and link is not None:
            link.unsubscribe(expired)
        if next_due is not None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(next_due - now, self._sweep_idle)

    async def publish_event(self, event: Event) -> None:
        link = self._link
        if link is None:
            raise TransportError("redis client is closed")
        options = self.options
        body = options.check_size(
            encode_event(self._serializer, event, metadata=options.send_metadata)
        )
        if not link.up:
            await link.wait_up()
        pipe = link.publisher()
        pipe.publish(self._channel(event.route), body)  # sent with this loop iteration's batch
        if pipe.backlogged:
            await asyncio.shield(pipe.flushed())

    async def close(self) -> None:
        link, self._link = self._link, None
        self._sink = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._replies.clear()
        if link is not None:
            await link.close()

    def __repr__(self) -> str:
        return f"RedisClientTransport({self.options.address})"


def _failed(fut: asyncio.Future[None]) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None)
