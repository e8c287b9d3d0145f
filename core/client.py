"""``ClientProxy``: ``send()`` (request-response, streams) and ``emit()`` (events).

Pending requests live in one dict keyed by request id; each entry is removed exactly once
(reply, error, timeout, cancel, close), so thousands can be in flight without leaking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Literal

from .abc import ClientTransport, ConnectionStatus, Release, no_release
from .deadlines import Deadlines
from .eager import result_or_task
from .errors import ConfigError, RequestTimeout, RpcError, TransportError, short_repr
from .listeners import Listeners
from .middleware import (
    ClientMiddleware,
    EmitNext,
    Outgoing,
    SendNext,
    StreamNext,
    check_middleware,
    client_chains,
)
from .packets import MISSING, Event, Record, Reply, Request, new_id_factory
from .patterns import to_route

__all__ = ["DEFAULT_TIMEOUT", "Call", "ClientProxy"]

log = logging.getLogger("polybus.client")

DEFAULT_TIMEOUT = 30.0
"""Seconds a ``send()`` waits for its (final) reply unless told otherwise."""

StatusListener = Callable[[ConnectionStatus], None]


class _Pending:
    """One awaited request: its (last) value and the waiter of its caller."""

    __slots__ = ("done", "error", "value", "waiter")

    def __init__(self) -> None:
        self.value: Any = None
        self.waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: BaseException | None = None

    def push(self, reply: Reply) -> None:
        if self.done:
            return
        if reply.err:
            self.error = RpcError(reply.err)
            self.done = True
        else:
            if reply.response is not MISSING or not reply.disposed:
                self._put(None if reply.response is MISSING else reply.response)
            if reply.disposed:
                self.done = True
        self._wake()

    def _put(self, value: Any) -> None:
        self.value = value

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.error = exc
        self.done = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Stream(_Pending):
    """One iterated request: every value, in order, until its consumer takes it."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        super().__init__()
        self.items: deque[Any] = deque()

    def _put(self, value: Any) -> None:
        self.items.append(value)


class Call:
    """A cold request: nothing is sent until it is awaited or iterated.

    ``await call`` gives the reply (the last value of a streamed reply, ``None`` when the
    handler returned nothing); ``async for value in call`` gives every value in order.
    """

    __slots__ = ("_data", "_pattern", "_proxy", "_record", "_started", "_timeout")

    def __init__(
        self,
        proxy: ClientProxy,
        pattern: Any,
        data: Any,
        timeout: float | None,
        record: Record | None,
    ) -> None:
        self._proxy = proxy
        self._pattern = pattern
        self._data = data
        self._timeout = timeout
        self._record = record
        self._started = False

    def __await__(self) -> Generator[Any, None, Any]:
        chains = self._proxy._chains
        if chains is not None:
            self._claim()
            return chains[0](self._outgoing("request")).__await__()
        return self._result().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        chains = self._proxy._chains
        if chains is not None:
            self._claim()
            return chains[1](self._outgoing("stream"))
        return self._iterate()

    def _outgoing(self, kind: Literal["request", "stream"]) -> Outgoing:
        record = self._record
        return Outgoing(
            kind,
            self._pattern,
            to_route(self._pattern),
            record.data if record else self._data,
            dict(record.headers) if record and record.headers else {},
            self._timeout,
            self._proxy.transport.features.name,
            record,
        )

    def _claim(self) -> None:
        if self._started:
            raise RuntimeError("a send() result can be awaited or iterated only once")
        self._started = True

    async def _result(self, claim: bool = True) -> Any:
        if claim:
            self._claim()
        proxy = self._proxy
        pending = _Pending()
        rid, release = await proxy._start(self, pending)
        try:
            while not pending.done:
                waiter = pending.waiter = proxy._loop.create_future()
                await waiter
        finally:
            proxy._finish(rid, pending, release, self._timeout)
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def _iterate(self, claim: bool = True) -> AsyncIterator[Any]:
        if claim:
            self._claim()
        proxy = self._proxy
        pending = _Stream()
        rid, release = await proxy._start(self, pending)
        try:
            while True:
                while pending.items:
                    yield pending.items.popleft()
                if pending.done:
                    break
                waiter = pending.waiter = proxy._loop.create_future()
                await waiter
        finally:
            proxy._finish(rid, pending, release, self._timeout)
        if pending.error is not None:
            raise pending.error

    def __repr__(self) -> str:
        return f"<Call pattern={self._pattern!r} started={self._started}>"


class ClientProxy:
    """Talks to a service through one transport: ``send()``, ``emit()``, ``connect()``, ``close()``.

    Build one with :func:`polybus.create_client`; use ``async with`` or ``close()`` it.
    ``timeout`` (seconds, ``None`` = wait forever) is the default for every ``send()``.
    """

    def __init__(
        self,
        transport: ClientTransport,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        name: str | None = None,
        middleware: Sequence[ClientMiddleware] = (),
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.name = name
        self._pending: dict[str, _Pending] = {}
        self._next_id = new_id_factory()
        self._connected = False
        self._connecting: asyncio.Future[None] | None = None
        self._closed = False
        self._status = ConnectionStatus.DISCONNECTED
        self._listeners: Listeners[ConnectionStatus] = Listeners("connection status", log)
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None
        self._emitting: set[asyncio.Task[None]] = set()
        self._middleware: list[ClientMiddleware] = []
        self._chains: tuple[SendNext, StreamNext, EmitNext] | None = None
        """``send``/``stream``/``emit`` through the middleware; ``None`` when there is none."""
        self.use(*middleware)

    # -- middleware ----------------------------------------------------------------------

    def use(self, *middleware: ClientMiddleware) -> None:
        """Add middleware around every call (after the ones given so far: inside them)."""
        self._middleware.extend(check_middleware(list(middleware), ClientMiddleware))
        if self._middleware:
            self._chains = client_chains(
                self._middleware, self._send_next, self._stream_next, self._emit_next
            )

    def _call_of(self, message: Outgoing) -> Call:
        return Call(self, message.pattern, message.data, message.timeout, _record_of(message))

    def _send_next(self, message: Outgoing) -> Awaitable[Any]:
        return self._call_of(message)._result(claim=False)

    def _stream_next(self, message: Outgoing) -> AsyncIterator[Any]:
        return self._call_of(message)._iterate(claim=False)

    async def _emit_next(self, message: Outgoing) -> None:
        record = message.record
        event = Event(message.pattern, message.route, message.data, message.headers or None, record)
        await self._publish(event)

    # -- state ---------------------------------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    def watch_status(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener`` on every connection state change; returns an unsubscribe."""
        return self._listeners.add(listener)

    @property
    def pending_count(self) -> int:
        """Requests in flight (for diagnostics and leak checks)."""
        return len(self._pending)

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The loop the proxy runs on: looked up once (``get_running_loop()`` costs a
        ``getpid()`` system call before Python 3.12)."""
        loop = self._loop_ref
        if loop is None:
            loop = self._loop_ref = asyncio.get_running_loop()
        return loop

    # -- ReplySink -----------------------------------------------------------------------

    def on_reply(self, reply: Reply) -> None:
        pending = self._pending.get(reply.id) if reply.id is not None else None
        if pending is None:
            log.debug("dropping reply for unknown or finished request %r", reply.id)
            return
        pending.push(reply)

    def on_request_error(self, id: str, exc: BaseException) -> None:
        pending = self._pending.get(id)
        if pending is not None:
            pending.fail(exc)

    def on_connection_lost(self, exc: BaseException) -> None:
        # One exception object per request: a shared one would grow its traceback each
        # time a waiting caller re-raises it.
        message = str(exc) if isinstance(exc, TransportError) else f"connection lost: {exc}"
        for pending in list(self._pending.values()):
            error = TransportError(message)
            error.__cause__ = exc
            pending.fail(error)

    def on_status(self, status: ConnectionStatus) -> None:
        self._status = status
        self._listeners.notify(status)

    # -- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the transport; safe to call many times and from many tasks at once."""
        if self._connected:
            return
        if self._closed:
            raise TransportError("client is closed")
        if self._connecting is None:
            self._connecting = self._loop.create_future()
            try:
                self.on_status(ConnectionStatus.CONNECTING)
                await self.transport.connect(self)
            except BaseException as exc:
                fut, self._connecting = self._connecting, None
                error: BaseException = exc
                if not isinstance(exc, (TransportError, asyncio.CancelledError)):
                    error = TransportError(f"cannot connect: {exc}")
                    error.__cause__ = exc
                fut.set_exception(error)
                fut.exception()  # mark retrieved: the raising caller reports it
                self.on_status(ConnectionStatus.DISCONNECTED)
                if error is exc:
                    raise
                raise error from exc
            self._connected = True
            self.on_status(ConnectionStatus.CONNECTED)
            self._connecting.set_result(None)
        else:
            await asyncio.shield(self._connecting)

    async def close(self) -> None:
        """Fail every pending request with ``TransportError`` and close the transport."""
        if self._closed:
            return
        self._closed = True
        for pending in list(self._pending.values()):
            pending.fail(TransportError("client closed while the request was pending"))
        was_connected = self._connected
        self._connected = False
        if was_connected or self._connecting is not None:
            await self.transport.close()
        self.on_status(ConnectionStatus.CLOSED)

    async def __aenter__(self) -> ClientProxy:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- verbs ---------------------------------------------------------------------------

    def send(
        self,
        pattern: Any,
        data: Any = None,
        *,
        timeout: float | Any | None = MISSING,
        headers: dict[str, str] | None = None,
    ) -> Call:
        """A cold request for ``pattern``: await it for the reply, iterate it for a stream."""
        if pattern is None:
            raise ConfigError("pattern must not be None")
        record = data if isinstance(data, Record) else None
        if headers is not None:
            record = _with_headers(record, data, headers)
        return Call(self, pattern, data, self.timeout if timeout is MISSING else timeout, record)

    def emit(
        self, pattern: Any, data: Any = None, *, headers: dict[str, str] | None = None
    ) -> asyncio.Task[None]:
        """Publish an event now; the returned task completes when the transport accepted it."""
        if pattern is None:
            raise ConfigError("pattern must not be None")
        record = data if isinstance(data, Record) else None
        if headers is not None:
            record = _with_headers(record, data, headers)
        route = to_route(pattern)
        data = record.data if record else data
        work: Coroutine[Any, Any, None]
        if self._chains is None:
            event = Event(pattern, route, data, record.headers if record else None, record)
            work = self._publish(event)
        else:
            headers = dict(record.headers) if record and record.headers else {}
            name = self.transport.features.name
            outgoing = Outgoing("event", pattern, route, data, headers, None, name, record)
            work = _emitting(self._chains[2], outgoing)
        # Not awaiting the task is allowed (asyncio then logs a failure it was never asked
        # for); the proxy holds it until it is done: the loop keeps only a weak reference.
        task = self._loop.create_task(work)
        self._emitting.add(task)
        task.add_done_callback(self._emitting.discard)
        return task

    async def _publish(self, event: Event) -> None:
        if not self._connected:
            await self.connect()
        await self.transport.publish_event(event)

    # -- call machinery (used by Call) ---------------------------------------------------

    async def _start(self, call: Call, pending: _Pending) -> tuple[str, Release]:
        timeout = call._timeout
        loop = self._loop
        started = loop.time()
        if not self._connected:
            await self._connect_within(timeout, call._pattern)
        rid = self._next_id()
        record = call._record
        deadline = None if timeout is None else time.time() + timeout
        request = Request(
            rid,
            call._pattern,
            to_route(call._pattern),
            record.data if record else call._data,
            record.headers if record else None,
            deadline,
            record,
        )
        self._pending[rid] = pending
        try:
            # Most transports send without waiting; one that waits (a broken link it is
            # restoring, back-pressure) does so within the call's timeout, not beyond it.
            release, waiting = result_or_task(loop, self.transport.request(request))
            if waiting is not None:
                release = await self._within(waiting, timeout, started, call._pattern)
        except BaseException:
            del self._pending[rid]
            raise
        assert release is not None
        if timeout is not None:
            deadlines = self._deadlines
            if deadlines is None:
                deadlines = self._deadlines = Deadlines(self._loop)
            if waiting is not None:  # what is left of it (the key _finish discards it by)
                timeout = call._timeout = max(0.0, timeout - (loop.time() - started))
            deadlines.add(timeout, rid, pending, call._pattern)
        return rid, release

    async def _connect_within(self, timeout: float | None, pattern: Any) -> None:
        """``connect()``, bounded by a call's ``timeout``; the connection attempt itself goes
        on for the other callers."""
        if timeout is None:
            await self.connect()
            return
        connecting = self._loop.create_task(self.connect())
        connecting.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(connecting), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"no reply to {short_repr(pattern)} within {timeout:g}s (not connected)"
            ) from None

    async def _within(
        self, sending: asyncio.Task[Release], timeout: float | None, started: float, pattern: Any
    ) -> Release:
        if timeout is None:
            return await sending
        left = max(0.0, timeout - (self._loop.time() - started))
        try:
            return await asyncio.wait_for(sending, left)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"no reply to {short_repr(pattern)} within {timeout:g}s (could not be sent)"
            ) from None

    def _finish(self, rid: str, pending: _Pending, release: Release, timeout: float | None) -> None:
        pending.done = True
        self._pending.pop(rid, None)
        if timeout is not None and self._deadlines is not None:
            self._deadlines.discard(timeout, rid)
        if release is no_release:
            return
        try:
            release()
        except Exception:
            log.exception("transport release failed")

    def __repr__(self) -> str:
        name = f" {self.name}" if self.name else ""
        return f"<ClientProxy{name} transport={self.transport!r} status={self._status.value}>"


def _record_of(message: Outgoing) -> Record | None:
    """The record that carries what the middleware left in ``message`` to the transport."""
    record = message.record
    headers = message.headers or None
    if record is not None:
        return dataclasses.replace(record, data=message.data, headers=headers)
    return None if headers is None else Record(message.data, headers=headers)


async def _emitting(emit: EmitNext, message: Outgoing) -> None:
    await emit(message)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a background connect's failure as seen: the callers that waited report it."""
    if not task.cancelled():
        task.exception()


def _with_headers(record: Record | None, data: Any, headers: dict[str, str]) -> Record:
    if record is None:
        return Record(data, headers=dict(headers))
    return dataclasses.replace(record, headers={**(record.headers or {}), **headers})
