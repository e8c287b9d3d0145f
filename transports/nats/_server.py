"""The server half: one subscription per handler route, replies to each reply subject.

The route is what the server dispatches on (wildcards included); no queue group unless
``queue`` is set (server option, or per handler: ``@app.message_pattern(p, queue="q")``);
replies go out without headers, like NestJS's. In JetStream mode event routes are read
from durable consumers instead (:class:`~._consumer.EventConsumers`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import errors as js_errors

from polybus.abc import ConnectionReporter, ConnectionStatus, MessageSink, RouteSpec
from polybus.errors import PolybusError
from polybus.serializers import Serializer

from ._common import (
    ERRORS,
    FEATURES,
    ConnectionCallbacks,
    close_connection,
    log,
    open_connection,
)
from ._consumer import EventConsumers
from ._context import NatsContext, deadline_of, decode_message
from ._jetstream import features_for, stream_name
from ._options import NatsOptions

__all__ = ["NatsContext", "NatsServerTransport"]


class NatsServerTransport(ConnectionReporter, ConnectionCallbacks):
    features = FEATURES

    def __init__(self, options: NatsOptions, serializer: Serializer) -> None:
        self.options = options
        self.features = features_for(options)
        self._serializer = serializer
        self._nc: NatsClient | None = None
        self._subs: list[Subscription] = []
        self._events = EventConsumers(options, serializer) if options.jetstream else None

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._closing = False
        nc = self._nc
        if nc is None:
            nc = self._nc = await open_connection(self.options, self)
        events = self._events
        subscribed = routes if events is None else [r for r in routes if r.kind == "message"]
        try:
            with ERRORS("cannot subscribe on NATS at %s", self.options.describe()):
                for spec in subscribed:
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
                if events is not None:
                    await events.start(nc, [r for r in routes if r.kind == "event"], sink)
        except PolybusError:  # a route that is no subject, a JetStream stream not set up
            await self.close()
            raise

    def _receiver(self, route: str, sink: MessageSink, nc: NatsClient) -> Any:
        serializer, options = self._serializer, self.options
        limit = options.max_message_bytes

        async def receive(msg: Msg) -> None:
            incoming = decode_message(msg, route, serializer, limit)
            if incoming is not None:
                deadline = deadline_of(msg, incoming)
                await sink(NatsContext(incoming, deadline, msg, nc, serializer, options))

        return receive

    async def stop(self) -> None:
        if self._events is not None:
            await self._events.stop()
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
        if self._events is not None and self._nc is not None and not self._nc.is_closed:
            await self._events.release_unsettled()
        self._closing = True
        nc, self._nc = self._nc, None
        await close_connection(nc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS server connection to %s lost; reconnecting", self.options.describe())
            self.report_connection(ConnectionStatus.RECONNECTING)

    async def _on_reconnected(self) -> None:
        if not self._closing:
            log.info("NATS server connection to %s restored", self.options.describe())
            self.report_connection(ConnectionStatus.CONNECTED)

    async def _on_closed(self) -> None:
        """nats-py gave up (``max_reconnect_attempts``, or the server refused a reconnect)."""
        if not self._closing:
            nc = self._nc
            log.error(
                "NATS server connection to %s closed: %r",
                self.options.describe(),
                nc and nc.last_error,
            )
            self.report_connection(ConnectionStatus.CLOSED)

    async def delete_resources(self) -> None:
        """JetStream: delete this service's stream (and so its consumers)."""
        if self._events is None:
            return
        nc = await open_connection(self.options, ConnectionCallbacks())
        try:
            await nc.jetstream().delete_stream(stream_name(self.options))
        except js_errors.NotFoundError:
            pass
        except (nats_errors.Error, asyncio.TimeoutError) as exc:
            log.warning("cannot delete JetStream stream: %r", exc)
        finally:
            await close_connection(nc)

    def __repr__(self) -> str:
        return f"NatsServerTransport({self.options.describe()})"
