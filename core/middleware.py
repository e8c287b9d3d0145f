"""Middleware: code that runs around every call a client makes and every handler a service runs.

One envelope for what NestJS spreads over interceptors, guards and exception filters and
FastStream calls middlewares. Tracing (:mod:`polybus.otel`) and metrics
(:mod:`polybus.prometheus`) are middleware too.

Client side, subclass :class:`ClientMiddleware` and override what you need::

    class Stamp(ClientMiddleware):
        async def send(self, message: Outgoing, call_next: SendNext) -> Any:
            message.headers["x-tenant"] = "acme"        # the handler sees it
            return await call_next(message)             # call it again to retry

    client = create_client(url, middleware=[Stamp()])

Server side, subclass :class:`ServerMiddleware`::

    class Guard(ServerMiddleware):
        async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
            if message.headers.get("x-tenant") != "acme":
                raise RpcException({"status": "error", "message": "Forbidden"})
            return await call_next(message)

    app = Microservice(url, middleware=[Guard()])       # or per route:
    @app.message_pattern("sum", middleware=[Guard()])

Order: the first middleware listed is the outermost; a service's run outside a route's.
With none installed, the paths are the ones without middleware (nothing is composed).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError

if TYPE_CHECKING:
    from .abc import Context
    from .handlers import Handler
    from .packets import Record

__all__ = [
    "STREAMED",
    "ClientMiddleware",
    "EmitNext",
    "HandleNext",
    "Inbound",
    "Outgoing",
    "SendNext",
    "ServerMiddleware",
    "StreamNext",
]


@dataclass(eq=False)
class Outgoing:
    """A message a client is about to send; a middleware may change any field.

    ``kind`` is ``"request"`` (``await client.send()``), ``"stream"`` (``async for`` over
    it) or ``"event"`` (``emit()``). ``headers`` always is a dict (empty when the caller gave
    none): what is in it when the last ``call_next`` runs goes on the wire. ``timeout``
    is ``None`` for events. ``transport`` is the transport's ``Features.name``.
    """

    kind: Literal["request", "stream", "event"]
    pattern: Any
    route: str
    data: Any
    headers: dict[str, str]
    timeout: float | None
    transport: str
    record: Record | None = field(default=None, repr=False)
    """The caller's :class:`~polybus.Record`, when it passed one (its other options travel)."""


@dataclass(eq=False)
class Inbound:
    """A message a service is about to hand to a handler.

    ``data`` is what the handler receives (a middleware may replace it); ``context`` is the
    transport's :class:`~polybus.Context` (pattern, headers, request id, raw message);
    ``kind`` is the handler's kind (``"message"`` or ``"event"``); ``transport`` the
    transport's ``Features.name``.
    """

    context: Context
    kind: Literal["message", "event"]
    route: str
    handler: Handler
    transport: str
    data: Any

    @property
    def headers(self) -> dict[str, str]:
        """The message's headers (empty when it has none)."""
        return self.context.headers or {}

    @property
    def id(self) -> Any:
        """The request id (correlation id); :data:`~polybus.packets.MISSING` for an event."""
        return self.context.id


STREAMED: Any = type("Streamed", (), {"__repr__": lambda self: "STREAMED"})()
"""What the innermost ``call_next`` of a streaming handler returns: every item it yielded
has been sent. A middleware passes it on unchanged (any other value becomes the reply)."""

SendNext = Callable[[Outgoing], Awaitable[Any]]
StreamNext = Callable[[Outgoing], AsyncIterator[Any]]
EmitNext = Callable[[Outgoing], Awaitable[None]]
HandleNext = Callable[[Inbound], Awaitable[Any]]


class ClientMiddleware:
    """Runs around a client's calls; every method passes through until overridden.

    - ``send``: an awaited ``send()``; returns the reply (raise to fail the call; return
      without ``call_next`` to answer it locally; call ``call_next`` again to retry).
    - ``stream``: an iterated ``send()``; returns the async iterator of reply values.
    - ``emit``: ``emit()``; returns once the transport accepted the event.
    """

    async def send(self, message: Outgoing, call_next: SendNext) -> Any:
        return await call_next(message)

    def stream(self, message: Outgoing, call_next: StreamNext) -> AsyncIterator[Any]:
        return call_next(message)

    async def emit(self, message: Outgoing, call_next: EmitNext) -> None:
        await call_next(message)


class ServerMiddleware:
    """Runs around each handler call of a service.

    ``call_next(message)`` runs the handler (validating ``message.data`` against its
    annotation) and returns its result; for a streaming handler it sends each item as it
    is yielded and returns :data:`STREAMED` after the last. Raise to reject the message
    (a guard: an :class:`~polybus.RpcException` reaches the caller as its error, anything
    else as "Internal server error"; an event's failure policy applies), catch what
    ``call_next`` raises to map it (an exception filter), or return a value without calling
    it to answer a request yourself.
    """

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        return await call_next(message)


def client_chains(
    middleware: Sequence[ClientMiddleware], send: SendNext, stream: StreamNext, emit: EmitNext
) -> tuple[SendNext, StreamNext, EmitNext]:
    """The three verbs wrapped by ``middleware`` (the first is the outermost)."""
    for item in reversed(check_middleware(middleware, ClientMiddleware)):
        send = functools.partial(item.send, call_next=send)
        stream = functools.partial(item.stream, call_next=stream)
        emit = functools.partial(item.emit, call_next=emit)
    return send, stream, emit


def server_chain(middleware: Sequence[ServerMiddleware], handle: HandleNext) -> HandleNext:
    """``handle`` wrapped by ``middleware`` (the first is the outermost)."""
    for item in reversed(check_middleware(middleware, ServerMiddleware)):
        handle = functools.partial(item.handle, call_next=handle)
    return handle


def check_middleware(middleware: Any, kind: type[Any]) -> list[Any]:
    """``middleware`` as a list, each one an instance of ``kind`` (a clear error otherwise)."""
    if isinstance(middleware, (ClientMiddleware, ServerMiddleware)) or not isinstance(
        middleware, (list, tuple)
    ):
        raise ConfigError(f"middleware must be a list of {kind.__name__}, got {middleware!r}")
    for item in middleware:
        if not isinstance(item, kind):
            raise ConfigError(f"middleware must be {kind.__name__} instances, got {item!r}")
    return list(middleware)
