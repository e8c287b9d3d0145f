"""JetStream event routes: one durable pull consumer per route, fetched in a loop.

Every fetched message is unsettled until its context settles it (ack or term, once). What
is still unsettled when the server closes (taken during shutdown, or its handler was cut
off) is nak'ed, so another instance gets it at once instead of after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from polybus.abc import MessageSink, RouteSpec
from polybus.serializers import Serializer

from ._common import log
from ._context import NatsContext, deadline_of, decode_message
from ._jetstream import consumer_config, durable_name, ensure_stream, stream_name
from ._options import NatsOptions

__all__ = ["EventConsumers"]

_FETCH_WAIT = 1.0
"""Seconds one pull request waits for messages (the loop then asks again)."""


class EventConsumers:
    """The pull loops of a server's event routes and the messages they took."""

    def __init__(self, options: NatsOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._tasks: list[asyncio.Task[None]] = []
        self._unsettled: dict[int, Msg] = {}

    async def start(self, nc: NatsClient, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        """Create the stream and the durable consumers, then start fetching."""
        if not routes:
            return
        js = nc.jetstream()
        stream = stream_name(self.options)
        await ensure_stream(js, stream, sorted({s.route for s in routes}), self.options.max_age)
        for spec in routes:
            base = spec.options.get("queue") or self.options.durable_base
            durable = durable_name(base, spec.route)
            subscription = await js.pull_subscribe(
                spec.route,
                durable=durable,
                stream=stream,
                config=consumer_config(self.options, durable, spec.route),
            )
            self._tasks.append(
                asyncio.ensure_future(self._pull(subscription, spec.route, sink, nc, js))
            )

    async def _pull(
        self,
        subscription: JetStreamContext.PullSubscription,
        route: str,
        sink: MessageSink,
        nc: NatsClient,
        js: JetStreamContext,
    ) -> None:
        while not nc.is_closed:
            try:
                msgs = await subscription.fetch(self.options.fetch_batch, timeout=_FETCH_WAIT)
            except (nats_errors.TimeoutError, asyncio.TimeoutError):
                continue
            except nats_errors.Error as exc:  # disconnected, JetStream restarting...
                log.debug("JetStream fetch on %r failed: %r", route, exc)
                await asyncio.sleep(self.options.reconnect_time_wait)
                continue
            for msg in msgs:
                self._unsettled[id(msg)] = msg
            for msg in msgs:
                await self._deliver(msg, route, sink, nc, js)

    async def _deliver(
        self, msg: Msg, route: str, sink: MessageSink, nc: NatsClient, js: JetStreamContext
    ) -> None:
        incoming = decode_message(msg, route, self._serializer, self.options.max_message_bytes)
        if incoming is None:  # bad input: rejected once, never delivered again
            self._settled(msg)
            with contextlib.suppress(nats_errors.Error):
                await msg.term()
            return
        deadline = deadline_of(msg, incoming)
        serializer, options = self._serializer, self.options
        await sink(NatsContext(incoming, deadline, msg, nc, serializer, options, js, self._settled))

    def _settled(self, msg: Msg) -> None:
        self._unsettled.pop(id(msg), None)

    async def stop(self) -> None:
        """Stop fetching; handlers of messages already taken go on and settle them."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def release_unsettled(self) -> None:
        """Nak every message taken but not settled, so the stream delivers it again now."""
        unsettled, self._unsettled = list(self._unsettled.values()), {}
        for msg in unsettled:
            with contextlib.suppress(nats_errors.Error):
                await msg.nak()
