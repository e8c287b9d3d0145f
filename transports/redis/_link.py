"""The link: a subscriber and a publisher connection to one Redis, rebuilt after a loss."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from polybus.abc import ConnectionStatus
from polybus.errors import PolybusError, TransportError

from ._common import ERRORS, log
from ._options import RedisOptions
from ._pipe import Pipe, command

__all__ = ["Link", "MessageHandler"]

_CONFIRMATIONS = frozenset((b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe"))


MessageHandler = Callable[[bytes, bytes, "bytes | None"], "Awaitable[None] | None"]


class Link:
    """A subscriber and a publisher connection to one Redis, rebuilt after a loss.

    ``on_message(channel, body, pattern)`` gets every pub/sub message (``pattern`` is the
    subscribed pattern of a ``pmessage``); an awaitable it returns is awaited before the
    next message is read (back-pressure). ``on_restore(link)`` runs after every
    (re)connection, before the link counts as up: it restores the subscriptions.
    """

    def __init__(
        self,
        options: RedisOptions,
        on_message: MessageHandler,
        on_restore: Callable[[Link], Awaitable[None]],
        on_lost: Callable[[PolybusError], None] | None = None,
        on_status: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        self.options = options
        self._on_message = on_message
        self._on_restore = on_restore
        self._on_lost = on_lost
        self._on_status = on_status
        self.session = 0
        self.up = False
        self.sub: Pipe | None = None
        self.pub: Pipe | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._expect: deque[list[Any]] = deque()  # per command: [replies left, future]
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reconnecting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failure: TransportError | None = None
        self._warned_publish = False

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open both connections and restore the subscriptions, or raise TransportError."""
        options = self.options
        conns = [options.connection(), options.connection()]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(_open(conn) for conn in conns), return_exceptions=True),
                options.connect_timeout,
            )
        except asyncio.TimeoutError:
            await _disconnect(conns)
            raise TransportError(
                f"cannot connect to {options.address}: no answer in {options.connect_timeout:g}s"
            ) from None
        except BaseException:
            await _disconnect(conns)
            raise
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await _disconnect(conns)
            if not isinstance(failure, (RedisError, OSError, asyncio.TimeoutError)):
                raise failure
            raise TransportError(
                f"cannot connect to {options.address}: {failure or type(failure).__name__}"
            ) from failure
        if self._closed:
            await _disconnect(conns)
            raise TransportError("redis transport closed")
        self.session += 1
        session = self.session
        self._expect.clear()
        lost = self._lost_callback(session)
        self.sub = Pipe(conns[0], lost)
        self.pub = Pipe(conns[1], lost)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_subscriber(conns[0], lost)),
            loop.create_task(self._read_publisher(conns[1], lost)),
        ]
        try:
            await self._on_restore(self)
        except BaseException as exc:
            error = ERRORS.error(exc, "redis connection lost")
            self._teardown(error)
            if error is exc or not isinstance(exc, Exception):
                raise
            raise error from exc
        if self.session != session or self.sub is None:
            raise TransportError(f"lost the connection to {options.address} while subscribing")
        self.up = True
        if not self._ready.done():
            self._ready.set_result(None)

    def _lost_callback(self, session: int) -> Callable[[BaseException], None]:
        def lost(exc: BaseException) -> None:
            if session == self.session and not self._closed:
                self._lost(exc)

        return lost

    def _lost(self, exc: BaseException) -> None:
        if self.sub is None:
            return
        error = ERRORS.error(exc, "redis connection lost")
        was_up = self.up
        self._teardown(error)
        if not was_up:
            return  # a connect in progress sees the failure itself
        log.warning("lost the connection to %s: %s; reconnecting", self.options.address, exc)
        self._ready = asyncio.get_running_loop().create_future()
        self._report(ConnectionStatus.DISCONNECTED)
        if self._on_lost is not None:
            self._on_lost(error)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _teardown(self, error: PolybusError) -> None:
        self.up = False
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        conns = []
        for pipe in (self.sub, self.pub):
            if pipe is not None:
                pipe.cancel()
                conns.append(pipe.conn)
        self.sub = self.pub = None
        expect, self._expect = self._expect, deque()
        for _, fut in expect:
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()
        if conns:
            task = asyncio.get_running_loop().create_task(_disconnect(conns))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _reconnect(self) -> None:
        options = self.options
        delay = options.retry_delay
        attempts = 0
        self._report(ConnectionStatus.RECONNECTING)
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except TransportError as exc:
                attempts += 1
                if options.retry_attempts is not None and attempts >= options.retry_attempts:
                    log.error(
                        "giving up on %s after %d attempts: %s", options.address, attempts, exc
                    )
                    self._failure = exc
                    if not self._ready.done():
                        self._ready.set_exception(exc)
                        self._ready.exception()
                    self._report(ConnectionStatus.CLOSED)  # for good: calls fail from now on
                    return
                log.info("reconnecting to %s failed: %s", options.address, exc)
                delay = min(delay * 2, options.max_retry_delay)
                continue
            log.info("reconnected to %s", options.address)
            self._report(ConnectionStatus.CONNECTED)
            return

    def _report(self, status: ConnectionStatus) -> None:
        if self._on_status is not None:
            self._on_status(status)

    async def wait_up(self, timeout: float | None = None) -> None:
        """Return once the link is up; ``TransportError`` if it is closed or stays down."""
        if self.up:
            return
        if self._closed:
            raise TransportError("redis transport closed")
        if self._failure is not None:
            raise TransportError(f"{self.options.address} is unreachable: {self._failure}")
        wait = self.options.connect_timeout if timeout is None else max(timeout, 0.0)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), wait)
        except asyncio.TimeoutError:
            raise TransportError(
                f"not connected to {self.options.address} (reconnecting)"
            ) from None

    # -- reading ----------------------------------------------------------------------------

    async def _read_subscriber(
        self, conn: Connection, lost: Callable[[BaseException], None]
    ) -> None:
        handle = self._on_message
        expect = self._expect
        read = _reader(conn)
        try:
            while True:
                try:
                    msg = await read()
                except ResponseError as exc:
                    msg = exc
                if type(msg) is not list:
                    if isinstance(msg, ResponseError):  # a refused (P)SUBSCRIBE
                        self._refused(msg)
                    continue
                kind = msg[0]
                if kind == b"message" or kind == b"pmessage":
                    try:
                        if kind == b"message":
                            pending = handle(msg[1], msg[2], None)
                        else:
                            pending = handle(msg[2], msg[3], msg[1])
                        if pending is not None:
                            await pending
                    except Exception:  # a bug downstream must not look like a lost connection
                        log.exception("failed to handle a message on %r", msg[-2])
                elif kind in _CONFIRMATIONS and expect:
                    head = expect[0]
                    head[0] -= 1
                    if head[0] <= 0:
                        expect.popleft()
                        fut = head[1]
                        if fut is not None and not fut.done():
                            fut.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lost(exc)

    def _refused(self, exc: ResponseError) -> None:
        if self._expect:
            _, fut = self._expect.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(TransportError(f"redis refused to subscribe: {exc}"))
        else:
            log.warning("redis error on the subscriber connection: %s", exc)

    async def _read_publisher(
        self, conn: Connection, lost: Callable[[BaseException], None]
    ) -> None:
        read = _reader(conn)
        try:
            while True:
                try:
                    reply = await read()  # the receiver count of each PUBLISH
                except ResponseError as exc:
                    reply = exc
                if isinstance(reply, ResponseError) and not self._warned_publish:
                    self._warned_publish = True
                    log.warning("redis refused a PUBLISH: %s", reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lost(exc)

    # -- commands ----------------------------------------------------------------------------

    def _subscriber(self) -> Pipe:
        sub = self.sub
        if sub is None:
            raise TransportError(f"not connected to {self.options.address}")
        return sub

    def subscribe(
        self, channels: Sequence[bytes], *, pattern: bool = False
    ) -> asyncio.Future[None]:
        """Send one (P)SUBSCRIBE; the future resolves when Redis confirmed every channel."""
        sub = self._subscriber()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expect.append([len(channels), fut])
        sub.write(command(b"PSUBSCRIBE" if pattern else b"SUBSCRIBE", *channels))
        return fut

    def unsubscribe(self, channels: Sequence[bytes], *, pattern: bool = False) -> None:
        sub = self.sub
        if sub is None or not channels:
            return
        self._expect.append([len(channels), None])
        sub.write(command(b"PUNSUBSCRIBE" if pattern else b"UNSUBSCRIBE", *channels))

    def publisher(self) -> Pipe:
        pub = self.pub
        if pub is None or not self.up:
            raise TransportError(f"not connected to {self.options.address}")
        return pub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await self._reconnecting
        pub = self.pub
        if pub is not None and self.up:  # let what was written leave first
            with contextlib.suppress(TransportError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pub.flushed()), 2.0)
        self._teardown(TransportError("redis transport closed"))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _reader(conn: Connection) -> Callable[[], Awaitable[Any]]:
    """How to read one response: the connection's parser directly when it is redis-py's
    usual one (RESP2), skipping ``Connection.read_response``'s per-call wrapper (about a
    tenth of the CPU of a request); errors then come back as ``ResponseError`` values."""
    read = getattr(getattr(conn, "_parser", None), "read_response", None)
    if read is None or getattr(conn, "protocol", None) != 2:
        return conn.read_response
    return cast(Callable[[], Awaitable[Any]], read)


def _open(conn: Connection) -> Awaitable[None]:
    connect: Callable[[], Awaitable[None]] = conn.connect  # untyped in redis-py
    return connect()


async def _disconnect(conns: Sequence[Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
