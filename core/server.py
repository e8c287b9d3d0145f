"""``Microservice``: routes incoming messages to handlers and answers as NestJS does."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from .abc import (
    ConnectionStatus,
    Context,
    ReportsConnection,
    RouteSpec,
    ServerStatus,
    ServerTransport,
)
from .eager import start_eagerly
from .errors import ConfigError, RpcException, TransportError, describe_error, short_repr
from .handlers import HANDLERS_ATTR, Handler, HandlerMark
from .listeners import Listeners
from .logcontext import MESSAGE, LogContextFilter
from .middleware import STREAMED, Inbound, ServerMiddleware, check_middleware, server_chain
from .packets import MISSING, Reply
from .patterns import route_from_wire, to_route
from .policy import DEFAULT_POLICY, FailurePolicy
from .slots import Slots

__all__ = ["DEFAULT_GRACE", "DEFAULT_MAX_CONCURRENCY", "Hook", "Microservice", "StatusListener"]

log = logging.getLogger("polybus.server")
log.addFilter(LogContextFilter())  # its records about a message name its route and id

F = TypeVar("F", bound=Callable[..., Any])

Hook = Callable[[], Any]
"""A lifecycle hook: a function of no arguments, sync or async (its awaitable is awaited)."""

H = TypeVar("H", bound=Hook)

StatusListener = Callable[[ServerStatus], None]
_SERVING = (ServerStatus.LISTENING, ServerStatus.RECONNECTING)

DEFAULT_MAX_CONCURRENCY = 1024
"""Handlers running at once; beyond it, intake waits (back-pressure to the transport)."""

DEFAULT_GRACE = 10.0
"""Seconds ``close()`` lets in-flight handlers finish before cancelling them."""

INTERNAL_ERROR = {"status": "error", "message": "Internal server error"}


class Microservice:
    """A service: handlers registered by pattern, served over one transport.

    ``Microservice("nats://127.0.0.1:4222")``, a NestJS-style dict, or
    ``Microservice(transport=...)`` with a ready ``ServerTransport``. ``await app.listen()``
    starts serving; ``await app.close()`` stops intake, drains in-flight handlers (up to
    ``grace`` seconds) and closes the transport; ``await app.run()`` serves until SIGINT or
    SIGTERM.

    Lifecycle hooks, FastStream's four (``@app.on_startup`` or the keyword of that name, any
    number of each, run in registration order, sync or async, no arguments):
    ``on_startup`` before the transport connects, ``after_startup`` once it receives,
    ``on_shutdown`` when ``close()`` begins (still receiving), ``after_shutdown`` once the
    transport is closed. A startup hook that raises aborts ``listen()``: what was opened is
    closed and the shutdown hooks do not run. A shutdown hook that raises is logged and the
    shutdown goes on. ``status`` / ``watch_status()`` report the :class:`ServerStatus`;
    ``await app.wait_ready()`` returns once ``listen()`` has (for a ``run()`` in a task).
    """

    def __init__(
        self,
        target: Any = None,
        *,
        transport: ServerTransport | None = None,
        serializer: Any = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        grace: float = DEFAULT_GRACE,
        name: str | None = None,
        on_failure: FailurePolicy = DEFAULT_POLICY,
        middleware: Sequence[ServerMiddleware] = (),
        on_startup: Sequence[Hook] = (),
        after_startup: Sequence[Hook] = (),
        on_shutdown: Sequence[Hook] = (),
        after_shutdown: Sequence[Hook] = (),
        **options: Any,
    ) -> None:
        self._target = target
        self._transport = transport
        self._serializer = serializer
        self._options = options
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.grace = grace
        self.name = name
        self.on_failure = on_failure
        """The failure policy of events whose handler has none of its own."""
        self._middleware: list[ServerMiddleware] = check_middleware(middleware, ServerMiddleware)
        self._transport_name = ""
        self._messages: dict[str, Handler] = {}
        self._events: dict[str, list[Handler]] = {}
        self._slots: Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The serving loop, kept: ``get_running_loop()`` costs a system call before 3.12."""
        self._inflight: set[asyncio.Task[None]] = set()
        self._listening = False
        self._closing = False
        self._intake_stopped = False
        """Set once ``close()`` stops intake (after the ``on_shutdown`` hooks)."""
        self._stopped: asyncio.Event | None = None
        """Set when serving ends: ``close()`` finished, or the transport gave up."""
        self._hooks: dict[str, list[Hook]] = {
            "on_startup": list(on_startup),
            "after_startup": list(after_startup),
            "on_shutdown": list(on_shutdown),
            "after_shutdown": list(after_shutdown),
        }
        self._status = ServerStatus.STOPPED
        self._status_listeners: Listeners[ServerStatus] = Listeners("server status", log)
        self._ready: asyncio.Future[None] | None = None
        """Resolved when a ``listen()`` returns, failed or cancelled when it does not;
        replaced by the next ``listen()`` or a ``close()``."""

    # -- registration --------------------------------------------------------------------

    def message_pattern(self, pattern: Any, **options: Any) -> Callable[[F], F]:
        """Register the request handler of ``pattern`` (the last one registered wins)."""

        def decorate(fn: F) -> F:
            self.add_handler(fn, HandlerMark(pattern, "message", options))
            return fn

        return decorate

    def event_pattern(self, pattern: Any, **options: Any) -> Callable[[F], F]:
        """Register an event handler of ``pattern``; every handler of a pattern runs."""

        def decorate(fn: F) -> F:
            self.add_handler(fn, HandlerMark(pattern, "event", options))
            return fn

        return decorate

    def add_handler(self, fn: Callable[..., Any], mark: HandlerMark) -> Handler:
        if self._listening:
            raise ConfigError("register handlers before listen()")
        handler = Handler(fn, mark)
        if mark.kind == "message":
            self._messages[handler.route] = handler
        else:
            self._events.setdefault(handler.route, []).append(handler)
        return handler

    def use(self, *middleware: ServerMiddleware) -> None:
        """Add middleware around every handler (after the ones given so far: inside them)."""
        if self._listening:
            raise ConfigError("add middleware before listen()")
        self._middleware.extend(check_middleware(list(middleware), ServerMiddleware))

    def include(self, obj: Any) -> Any:
        """Register every function or method of ``obj`` marked with the module decorators."""
        for attr in dir(obj):
            member = getattr(obj, attr, None)
            for mark in getattr(member, HANDLERS_ATTR, ()):
                assert callable(member)
                self.add_handler(member, mark)
        return obj

    @property
    def handlers(self) -> list[Handler]:
        return [*self._messages.values(), *(h for hs in self._events.values() for h in hs)]

    def routes(self) -> list[RouteSpec]:
        specs = [RouteSpec(h.route, "message", h.options) for h in self._messages.values()]
        for route, handlers in self._events.items():
            options: dict[str, Any] = {}
            for handler in handlers:
                options.update(handler.options)
            if route not in self._messages:
                specs.append(RouteSpec(route, "event", options))
        return specs

    # -- lifecycle hooks -----------------------------------------------------------------

    def on_startup(self, fn: H) -> H:
        """Register ``fn`` to run when ``listen()`` begins, before the transport connects."""
        self._hooks["on_startup"].append(fn)
        return fn

    def after_startup(self, fn: H) -> H:
        """Register ``fn`` to run once the transport receives, before ``listen()`` returns."""
        self._hooks["after_startup"].append(fn)
        return fn

    def on_shutdown(self, fn: H) -> H:
        """Register ``fn`` to run when ``close()`` begins, while the transport still receives."""
        self._hooks["on_shutdown"].append(fn)
        return fn

    def after_shutdown(self, fn: H) -> H:
        """Register ``fn`` to run once ``close()`` has closed the transport."""
        self._hooks["after_shutdown"].append(fn)
        return fn

    async def _run_hooks(self, stage: str) -> None:
        for hook in list(self._hooks[stage]):
            await _call_hook(hook)

    async def _run_hooks_logged(self, stage: str) -> None:
        """Run the hooks of a shutdown stage; one that raises is logged, the others run."""
        for hook in list(self._hooks[stage]):
            try:
                await _call_hook(hook)
            except Exception:
                log.exception("%s hook %s failed", stage, getattr(hook, "__qualname__", hook))

    # -- status --------------------------------------------------------------------------

    @property
    def status(self) -> ServerStatus:
        return self._status

    def watch_status(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener`` on every status change; returns an unsubscribe."""
        return self._status_listeners.add(listener)

    def _set_status(self, status: ServerStatus) -> None:
        if status is self._status:
            return
        self._status = status
        self._status_listeners.notify(status)

    def _on_connection(self, status: ConnectionStatus) -> None:
        """The transport's connection report: only a listening server changes with it. A
        connection closed while listening (not by ``close()``) means the transport gave up
        reconnecting: the service has failed, and ``run()`` ends."""
        current = self._status
        if status is ConnectionStatus.CLOSED and current in _SERVING and not self._closing:
            log.error("%s; nothing is received", self._gave_up())
            self._set_status(ServerStatus.FAILED)
            if self._stopped is not None:
                self._stopped.set()
        elif current is ServerStatus.LISTENING and status is not ConnectionStatus.CONNECTED:
            self._set_status(ServerStatus.RECONNECTING)
        elif current is ServerStatus.RECONNECTING and status is ConnectionStatus.CONNECTED:
            self._set_status(ServerStatus.LISTENING)

    async def wait_ready(self) -> None:
        """Wait until ``listen()`` (or ``run()``) has returned or started serving: messages
        published from then on are handled. Raises what made that ``listen()`` fail
        (``CancelledError`` if it was cancelled). Cancelling the wait cancels nothing else."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._ready)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def transport(self) -> ServerTransport:
        if self._transport is None:
            from .config import create_server_transport

            self._transport = create_server_transport(
                self._target, serializer=self._serializer, **self._options
            )
        return self._transport

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def listen(self) -> None:
        """Start receiving; returns once messages published from now on are handled.

        Runs the ``on_startup`` hooks, the transport's ``listen``, then the
        ``after_startup`` hooks. If any of it raises or is cancelled (a long Kafka group
        join, say), the transport is closed before the error propagates: nothing stays
        open and ``close()`` has nothing to do."""
        if self._listening:
            return
        loop = self._loop = asyncio.get_running_loop()
        if self._ready is None or self._ready.done():
            self._ready = loop.create_future()
        ready = self._ready
        try:
            transport = self.transport
            self._check_policies(transport)
            self._compose(transport)
        except BaseException as exc:  # a configuration error: nothing opened yet
            _fail_ready(ready, exc)
            raise
        self._slots = Slots(self.max_concurrency)
        self._stopped = asyncio.Event()
        self._listening = True
        self._set_status(ServerStatus.STARTING)
        try:
            await self._run_hooks("on_startup")
            if isinstance(transport, ReportsConnection):
                transport.watch_connection(self._on_connection)
            await transport.listen(self.routes(), self._accept)
            self._set_status(ServerStatus.LISTENING)
            await self._run_hooks("after_startup")
        except BaseException as exc:
            await self._abort(transport)
            _fail_ready(ready, exc)
            raise
        if not ready.done():
            ready.set_result(None)
        log.info("%s listening on %s routes", self.name or "microservice", len(self.routes()))

    async def _abort(self, transport: ServerTransport) -> None:
        """Undo a ``listen()`` that did not complete: stop intake, cancel what it started
        (those messages stay unsettled, so the broker delivers them again), close the
        transport (what a cancelled broker join left open too)."""
        self._intake_stopped = True
        try:
            await transport.stop()
            await self.drain(0)
        except Exception:
            log.exception("stopping %s after a failed listen() failed", transport)
        finally:
            try:
                await transport.close()
            except Exception:
                log.exception("closing %s after a failed listen() failed", transport)
            self._listening = self._intake_stopped = False
            self._set_status(ServerStatus.STOPPED)

    def _check_policies(self, transport: ServerTransport) -> None:
        """A failure policy that dead-letters needs a transport that can (checked at setup)."""
        policies = [self.on_failure, *(h.policy for h in self.handlers if h.policy is not None)]
        for policy in policies:
            if policy.dead_letter is not None and not transport.features.dead_letter:
                raise ConfigError(
                    f"the {transport.features.name} transport cannot dead-letter: a failure "
                    f"policy names {policy.dead_letter!r}"
                )

    def _compose(self, transport: ServerTransport) -> None:
        """Wrap each handler in its middleware once, so a message pays for no list walk;
        a handler without middleware keeps the plain path."""
        self._transport_name = transport.features.name
        for handler in self.handlers:
            middleware = [*self._middleware, *handler.middleware]
            handler.chain = server_chain(middleware, self._invoke) if middleware else None

    async def close(self, grace: float | None = None) -> None:
        """Stop intake, let in-flight handlers finish (up to ``grace`` s), close the transport."""
        if not self._listening or self._closing:
            return
        self._closing = True
        self._set_status(ServerStatus.STOPPING)
        transport = self.transport
        try:
            await self._run_hooks_logged("on_shutdown")
            self._intake_stopped = True
            await transport.stop()
            await self.drain(self.grace if grace is None else grace)
        finally:
            try:
                await transport.close()
            finally:
                self._listening = False
                self._closing = self._intake_stopped = False
                self._ready = None
                self._set_status(ServerStatus.STOPPED)
                if self._stopped is not None:
                    self._stopped.set()
        await self._run_hooks_logged("after_shutdown")

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight handlers; cancel the ones still running after ``timeout``."""
        if not self._inflight:
            return
        _, still_running = await asyncio.wait(set(self._inflight), timeout=timeout)
        for task in still_running:
            task.cancel()
        if still_running:
            log.warning(
                "cancelled %d handlers still running after %.1fs", len(still_running), timeout
            )
            await asyncio.wait(still_running)

    async def run(self) -> None:
        """Listen until SIGINT/SIGTERM (or ``close()``), then shut down gracefully. If the
        transport gives up reconnecting meanwhile (:attr:`ServerStatus.FAILED`), it shuts
        down too and raises :class:`TransportError`, so that a supervisor restarts it."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []
        # Signals first: a SIGTERM that arrives as soon as the port opens is a clean stop.
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        waiters: list[asyncio.Future[Any]] = []
        failed = False
        try:
            await self.listen()
            assert self._stopped is not None
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._stopped.wait()),
            ]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            failed = self._status is ServerStatus.FAILED
        finally:
            for waiter in waiters:
                waiter.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.close()
        if failed:
            raise TransportError(self._gave_up())

    def _gave_up(self) -> str:
        name = self.name or "microservice"
        return f"{name}: the {self._transport_name} transport gave up reconnecting to its broker"

    async def __aenter__(self) -> Microservice:
        await self.listen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- dispatch ------------------------------------------------------------------------

    async def _accept(self, context: Context) -> None:
        """The ``MessageSink``: take a slot, start handling, go on in the background once
        the handler waits (see :mod:`polybus.eager`)."""
        if self._intake_stopped:
            return  # left unsettled: redelivered where the broker keeps it, not rejected
        slots = self._slots
        loop = self._loop
        assert slots is not None and loop is not None
        if slots.free:
            slots.free -= 1
        else:
            await slots.wait()
        try:
            task = start_eagerly(loop, self._handling(context))
        except Exception:
            slots.release()
            log.exception("handling %s failed", context)
            await _settle_quietly(context, False)
            return
        except BaseException:
            slots.release()
            raise
        if task is None:  # answered without waiting
            slots.release()
            return
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        assert self._slots is not None
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("handler task failed", exc_info=task.exception())

    def _handling(self, context: Context) -> Coroutine[Any, Any, None]:
        """The coroutine that handles ``context`` (routed here: one coroutine less per message).

        Whatever it meets — an unroutable pattern, a failing handler, validation, a reply that
        cannot be sent, a failing log call — it ends by settling the message exactly once;
        only cancellation at shutdown leaves a message unsettled (the broker redelivers it)."""
        pattern = context.pattern
        try:
            route = route_from_wire(pattern) if isinstance(pattern, str) else to_route(pattern)
        except Exception as exc:  # TypeError, ValueError, RecursionError: a value from the wire
            return self._reject_unroutable(context, exc)
        if context.id is MISSING:
            return self._handle_event(route, context)
        return self._handle_request(route, context)

    async def _reject_unroutable(self, context: Context, exc: Exception) -> None:
        MESSAGE.set((None, context.id if context.is_request else None))
        log.warning("unroutable pattern %s: %s", short_repr(context.pattern), describe_error(exc))
        if context.is_request:
            await _reply_quietly(context, Reply.no_handler(context.id))
        await _settle_quietly(context, False)

    async def _handle_request(self, route: str, context: Context) -> None:
        MESSAGE.set((route, context.id))
        handler = self._messages.get(route)
        if handler is None:
            await self._handle_unknown_request(route, context)
            return
        if context.expired:
            log.info("skipping %s: the caller's deadline has passed", short_repr(route))
            await _settle_quietly(context, True)
            return
        rid = context.id
        ok = True
        # No `finally`: a handler cancelled at shutdown leaves its message unsettled, so a
        # broker that keeps messages (RabbitMQ with acks, Kafka) delivers it again.
        try:
            chain = handler.chain
            if chain is not None:
                result = await chain(
                    Inbound(context, "message", route, handler, self._transport_name, context.data)
                )
                if result is STREAMED:
                    result = MISSING  # every item went out: the completion follows
                await context.send_reply(Reply(rid, result, None, True))
            else:
                result = handler.call(context.data, context)
                if handler.is_asyncgen or handler.is_generator:
                    await self._stream(rid, result, context)
                else:
                    if handler.is_coroutine or asyncio.iscoroutine(result):
                        result = await result
                    # None crosses as null, as a NestJS handler's null does (undefined has
                    # no Python twin): a NestJS caller's firstValueFrom() gets a value.
                    await context.send_reply(Reply(rid, result, None, True))
        except Exception as exc:
            ok = False
            await _reply_quietly(context, Reply(rid, MISSING, _error_payload(exc, handler), True))
        try:
            await context.settle(ok)
        except Exception:
            log.exception("settling a request to %s failed", short_repr(route))

    async def _handle_unknown_request(self, route: str, context: Context) -> None:
        events = self._events.get(route)
        if events:
            # NestJS runs the event handlers of a request's pattern and completes the call.
            ok = not await self._run_events(route, events, context)
            await _reply_quietly(context, Reply(context.id, MISSING, None, True))
        else:
            log.warning("no message handler for pattern %s", short_repr(context.pattern))
            await _reply_quietly(context, Reply.no_handler(context.id))
            ok = False
        await _settle_quietly(context, ok)

    async def _stream(self, rid: Any, result: Any, context: Context) -> None:
        """Send every item as soon as it is yielded, then the completion as its own packet
        (what NestJS sends for items that arrive on later ticks)."""
        await _send_items(rid, result, context)
        await context.send_reply(Reply(rid, MISSING, None, True))

    async def _invoke(self, message: Inbound) -> Any:
        """The innermost ``call_next`` of the middleware: run the handler; a streaming one's
        items are sent (a request) or drained (an event) here."""
        handler = message.handler
        context = message.context
        result = handler.call(message.data, context)
        if handler.is_asyncgen or handler.is_generator:
            if context.is_request:
                await _send_items(context.id, result, context)
            else:
                await _drain(result)
            return STREAMED
        if handler.is_coroutine or asyncio.iscoroutine(result):
            return await result
        return result

    async def _handle_event(self, route: str, context: Context) -> None:
        MESSAGE.set((route, None))
        handlers = self._events.get(route)
        if not handlers:
            message = self._messages.get(route)
            if message is None:
                log.warning("no event handler for pattern %s", short_repr(context.pattern))
                await _settle_quietly(context, False)
                return
            handlers = [message]
        failed = await self._run_events(route, handlers, context)
        ok = True if not failed else await self._after_failure(route, context, failed)
        try:
            await context.settle(ok)
        except Exception:
            log.exception("settling an event of %s failed", short_repr(route))

    async def _run_events(
        self, route: str, handlers: list[Handler], context: Context
    ) -> list[tuple[Handler, Exception]]:
        """Run each handler; the ones that raised, with what they raised."""
        failed: list[tuple[Handler, Exception]] = []
        for handler in handlers:
            try:
                chain = handler.chain
                if chain is not None:
                    await chain(
                        Inbound(
                            context, "event", route, handler, self._transport_name, context.data
                        )
                    )
                    continue
                result = handler.call(context.data, context)
                if handler.is_asyncgen or handler.is_generator:
                    await _drain(result)
                elif handler.is_coroutine or asyncio.iscoroutine(result):
                    await result
            except Exception as exc:
                failed.append((handler, exc))
                log.warning(
                    "event handler %s failed for %s: %s",
                    handler.name,
                    short_repr(route),
                    describe_error(exc),
                    exc_info=exc,
                )
        return failed

    async def _after_failure(
        self, route: str, context: Context, failed: list[tuple[Handler, Exception]]
    ) -> bool:
        """Apply the failure policy: retry the failed handlers, then dead-letter or reject.
        True when the event counts as handled (the handlers succeeded, or it was moved)."""
        policy = next((h.policy for h, _ in failed if h.policy is not None), self.on_failure)
        for attempt in range(1, policy.retries + 1):
            await asyncio.sleep(policy.delay(attempt))
            failed = await self._run_events(route, [h for h, _ in failed], context)
            if not failed:
                return True
        error = failed[-1][1]
        attempts = policy.retries + 1
        if policy.dead_letter is not None:
            try:
                await context.dead_letter(policy.dead_letter, error)
            except Exception as exc:
                log.error(
                    "event of %s failed %d time(s) and could not be dead-lettered to %r: %s",
                    short_repr(route),
                    attempts,
                    policy.dead_letter,
                    describe_error(exc),
                )
                return False
            log.error(
                "event of %s failed %d time(s); dead-lettered to %r: %s",
                short_repr(route),
                attempts,
                policy.dead_letter,
                describe_error(error),
            )
            return True
        log.error(
            "event of %s failed %d time(s); rejected: %s",
            short_repr(route),
            attempts,
            describe_error(error),
        )
        return False

    def __repr__(self) -> str:
        return (
            f"<Microservice {self.name or ''} handlers={len(self.handlers)}"
            f" status={self._status.value}>"
        )


async def _call_hook(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result


def _fail_ready(ready: asyncio.Future[None], exc: BaseException) -> None:
    """What ``wait_ready()`` raises for a ``listen()`` that failed with ``exc``."""
    if ready.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        ready.cancel()
    else:
        ready.set_exception(exc)
        ready.exception()  # retrieved: only the waiters, if any, raise it


def _error_payload(exc: Exception, handler: Handler) -> Any:
    if isinstance(exc, RpcException):
        return exc.to_wire()
    if isinstance(exc, ValidationError):
        return {
            "status": "error",
            "message": "Validation failed",
            "errors": exc.errors(include_url=False, include_context=False, include_input=False),
        }
    log.exception("handler %s failed", handler.name)
    return dict(INTERNAL_ERROR)


async def _reply_quietly(context: Context, reply: Reply) -> None:
    """Send ``reply``; a failure is logged, not raised: the message must still be settled."""
    try:
        await context.send_reply(reply)
    except Exception as exc:
        log.warning("could not send a reply to %s: %s", context, describe_error(exc))


async def _settle_quietly(context: Context, ok: bool) -> None:
    try:
        await context.settle(ok)
    except Exception:
        log.exception("settling %s failed", context)


async def _send_items(rid: Any, result: Any, context: Context) -> None:
    items: AsyncIterator[Any] = result if hasattr(result, "__anext__") else _aiter(result)
    async for item in items:
        await context.send_reply(Reply(rid, item))


async def _drain(result: Any) -> None:
    async for _ in result if hasattr(result, "__anext__") else _aiter(result):
        pass


async def _aiter(items: Iterator[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
