"""The client half: one connection and ONE wildcard inbox subscription for every request.

Each request goes out with reply subject ``_INBOX.<nuid>.<request id>`` and replies are
correlated by that last token. An empty ``503`` status message on the inbox (nobody
subscribes to the subject) becomes :class:`~polybus.errors.NoRespondersError`.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from polybus.abc import ConnectionStatus, Release, ReplySink
from polybus.errors import NoRespondersError, TransportError
from polybus.packets import Event, Request, encode_event, encode_request, merge_headers, read_reply
from polybus.serializers import Serializer

from ._common import (
    ERRORS,
    FEATURES,
    PUBLISH,
    ConnectionCallbacks,
    close_connection,
    log,
    open_connection,
)
from ._jetstream import features_for, publish_acknowledged
from ._options import NatsOptions

__all__ = ["NatsClientTransport"]

_STATUS = "Status"
_NO_RESPONDERS = "503"


class NatsClientTransport(ConnectionCallbacks):
    """One connection and one wildcard inbox subscription for every request."""

    features = FEATURES

    def __init__(self, options: NatsOptions, serializer: Serializer) -> None:
        self.options = options
        self.features = features_for(options)
        self._js: JetStreamContext | None = None
        self._serializer = serializer
        self._sink: ReplySink | None = None
        self._nc: NatsClient | None = None
        self._sub: Subscription | None = None
        self._prefix = ""
        self._prefix_len = 0
        self._routes: dict[str, str] = {}
        """Request id → route of every request in flight (for NoRespondersError)."""
        self._headers = dict(options.headers) if options.headers else None
        self._use_headers = True
        self._send_deadline = options.send_deadline

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink
        self._closing = False
        nc = await open_connection(self.options, self)
        # Headers (and so no-responders) need nats-server >= 2.2.
        self._use_headers = bool(getattr(nc, "_server_info", {}).get("headers", True))
        self._prefix = f"{nc.new_inbox()}."
        self._prefix_len = len(self._prefix)
        try:
            self._sub = await nc.subscribe(
                f"{self._prefix}>",
                cb=self._on_reply,
                pending_msgs_limit=0,  # the callback never blocks: no reason to drop replies
                pending_bytes_limit=0,
            )
        except ERRORS.catches as exc:
            await nc.close()
            raise ERRORS.error(exc, "cannot subscribe to the NATS reply inbox") from exc
        self._nc = nc
        if self.options.jetstream:
            self._js = nc.jetstream()

    async def _on_reply(self, msg: Msg) -> None:
        sink = self._sink
        if sink is None:
            return
        rid = msg.subject[self._prefix_len :]
        data = msg.data
        if not data:
            route = self._routes.get(rid)
            if route is None:
                return
            headers = msg.headers
            status = headers.get(_STATUS) if headers else None
            if status is None or status == _NO_RESPONDERS:
                sink.on_request_error(
                    rid,
                    NoRespondersError(
                        f"no subscribers listening on {route!r} (empty NATS response)"
                    ),
                )
            else:
                sink.on_request_error(rid, TransportError(f"NATS status {status} for {route!r}"))
            return
        # the inbox subject names the request: an unreadable reply fails it at once
        read_reply(sink, self._serializer, data, self.options.max_message_bytes, msg.subject, rid)

    def _headers_for(
        self, headers: dict[str, str] | None, deadline: float | None
    ) -> dict[str, str] | None:
        merged = merge_headers(
            self._headers, headers, deadline=deadline if self._send_deadline else None
        )
        if merged and not self._use_headers:
            return None
        return merged

    async def request(self, request: Request) -> Release:
        nc = self._nc
        if nc is None:
            raise TransportError("NATS client is not connected")
        # The deadline rides in the body's NestJS ``metadata`` unless the request has
        # headers anyway: nats-py builds and parses header blocks in Python (~20% of CPU).
        headers = None
        if request.headers or self._headers:
            headers = self._headers_for(request.headers, request.deadline)
        send_metadata = headers is None and self._send_deadline
        body = self.options.check_size(
            encode_request(self._serializer, request, metadata=send_metadata)
        )
        rid = request.id
        routes = self._routes
        routes[rid] = request.route
        try:
            await nc.publish(
                request.route,
                body,
                self._prefix + rid,
                headers,
            )
        except ERRORS.catches as exc:
            routes.pop(rid, None)
            raise ERRORS.error(exc, PUBLISH, len(body), request.route) from exc
        except BaseException:
            routes.pop(rid, None)
            raise

        def release() -> None:
            routes.pop(rid, None)

        return release

    async def publish_event(self, event: Event) -> None:
        nc = self._nc
        if nc is None:
            raise TransportError("NATS client is not connected")
        body = self.options.check_size(encode_event(self._serializer, event))
        headers = self._headers_for(event.headers, None)
        if self._js is not None:
            await publish_acknowledged(
                nc, self._js, event.route, body, headers, self.options.publish_timeout
            )
            return
        try:
            await nc.publish(event.route, body, "", headers)
            if self.options.confirm_publish:
                await nc.flush()
        except ERRORS.catches as exc:
            raise ERRORS.error(exc, PUBLISH, len(body), event.route) from exc

    async def close(self) -> None:
        self._closing = True
        nc, self._nc = self._nc, None
        self._js = None
        self._sink = None
        self._routes.clear()
        await close_connection(nc)

    # connection callbacks

    async def _on_disconnected(self) -> None:
        sink = self._sink
        if sink is None or self._closing:
            return
        sink.on_status(ConnectionStatus.DISCONNECTED)
        sink.on_connection_lost(
            TransportError(f"connection to NATS at {self.options.describe()} lost")
        )
        nc = self._nc
        if nc is not None and nc.is_reconnecting:
            sink.on_status(ConnectionStatus.RECONNECTING)

    async def _on_reconnected(self) -> None:
        sink = self._sink
        if sink is not None and not self._closing:
            sink.on_status(ConnectionStatus.CONNECTED)

    async def _on_closed(self) -> None:
        sink = self._sink
        if sink is None or self._closing:
            return
        log.warning(
            "NATS connection to %s closed: %r",
            self.options.describe(),
            self._nc and self._nc.last_error,
        )
        sink.on_connection_lost(
            TransportError(f"connection to NATS at {self.options.describe()} closed")
        )
        sink.on_status(ConnectionStatus.CLOSED)

    def __repr__(self) -> str:
        return f"NatsClientTransport({self.options.describe()})"
