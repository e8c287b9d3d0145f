"""The link: one robust connection, one channel, and a corked publisher on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from polybus.config import redact_url
from polybus.errors import PolybusError, TransportError

from ._common import ERRORS, log
from ._frames import Properties, append_body_frames, settle_frame
from ._options import RabbitMQOptions
from ._topology import declare_topology

if TYPE_CHECKING:
    import aio_pika
    import aio_pika.abc

__all__ = ["Link"]


class Link:
    """A robust connection with one channel (``channel``: aio-pika; ``raw``: aiormq).

    ``on_lost(exc)`` runs when the channel closes without us asking (connection drop,
    channel error); ``on_restored(raw)`` after the channel was reopened (queue declared,
    qos set): consumers are re-registered there before the link is marked ready again.
    ``routes``: a server's handler routes (its topology, :mod:`._topology`); ``None`` for a
    client. With ``confirm`` the channel is in confirm mode and every publish on it must go through
    :meth:`publish_confirmed` (which counts the delivery tags the broker confirms).
    """

    def __init__(
        self,
        options: RabbitMQOptions,
        prefetch: int,
        on_lost: Callable[[BaseException | None], None],
        on_restored: Callable[[Any], Awaitable[None]],
        on_ready: Callable[[], None] | None = None,
        *,
        confirm: bool = False,
        routes: Sequence[str] | None = None,
    ) -> None:
        self.options = options
        self.confirm = confirm
        self._routes = routes
        self._prefetch = prefetch
        self._on_lost = on_lost
        self._on_restored = on_restored
        self._on_ready = on_ready
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self.raw: Any = None
        self.ready = asyncio.Event()
        self.closing = False
        self._out: list[bytes] = []
        self._out_drain: asyncio.Future[None] | None = None
        self._draining: set[asyncio.Future[None]] = set()
        self._confirming_publishes: set[asyncio.Future[Any]] = set()
        self._method_cache: dict[tuple[str, str], bytes] = {}
        self._url = options.urls[0]
        self._confirming: aio_pika.abc.AbstractRobustChannel | None = None
        self._declared: set[str] = set()

    @property
    def url(self) -> str:
        return redact_url(self._url)

    async def open(self) -> None:
        options = self.options
        errors: list[str] = []
        for url in options.urls:
            try:
                self.connection = await self._connect(url)
            except ERRORS.catches as exc:
                errors.append(f"{redact_url(url)}: {type(exc).__name__}: {exc}")
                continue
            self._url = url
            break
        else:
            raise TransportError(f"cannot connect to RabbitMQ: {'; '.join(errors)}")
        try:
            with ERRORS("RabbitMQ setup of queue %r on %s failed", options.queue, self.url):
                channel = self.channel = self.connection.channel(publisher_confirms=self.confirm)
                await channel.initialize()
                await channel.set_qos(
                    prefetch_count=self._prefetch, global_=options.is_global_prefetch_count
                )
                await declare_topology(channel, options, self._routes)
                self.raw = await channel.get_underlay_channel()
                await self._on_restored(self.raw)
        except PolybusError:
            await self.close()
            raise
        channel.close_callbacks.add(self._channel_closed)
        channel.reopen_callbacks.add(self._channel_reopened)
        self.ready.set()

    async def _connect(self, url: str) -> aio_pika.abc.AbstractRobustConnection:
        """A robust connection to ``url``; cancelled or timed out, it closes what it made.

        A robust connection closed while its first attempt is midway can leave that
        attempt's AMQP connection open (its reader, writer and socket: aio-pika 10.2 on
        Python 3.11, about one cancel in 150 under load), so the attempt runs on, shielded
        from the cancel, until it settles (``connect_timeout`` bounds it), and only then is
        the connection closed."""
        import aio_pika

        options = self.options
        made: list[aio_pika.abc.AbstractRobustConnection] = []
        attempt = asyncio.ensure_future(
            aio_pika.connect_robust(
                options.connection_url(url),
                ssl_context=options.client_ssl(),
                reconnect_interval=options.reconnect_interval,
                timeout=options.connect_timeout,
                connection_class=_recorded(made),
            )
        )
        limit = options.connect_timeout + 1
        try:
            return await asyncio.wait_for(asyncio.shield(attempt), limit)
        except BaseException:
            if attempt.done():
                await _close_made(attempt, made)
            else:  # closed once settled, without holding up the cancel
                closer = asyncio.ensure_future(_close_when_settled(attempt, made, limit))
                _SETTLING.add(closer)
                closer.add_done_callback(_SETTLING.discard)
            raise

    def _channel_closed(self, _channel: Any, exc: BaseException | None) -> None:
        was_ready = self.ready.is_set()
        self.ready.clear()
        self._out.clear()
        self._fail_waiters()
        if was_ready and not self.closing:
            self._on_lost(exc)

    def _lost_error(self) -> TransportError:
        if self.closing:
            return TransportError("RabbitMQ transport closed")
        return TransportError(f"RabbitMQ connection to {self.url} was lost")

    def _fail_waiters(self) -> None:
        """Fail the futures of writes and confirms the closed channel will never resolve."""
        pending: list[asyncio.Future[Any]] = [*self._draining, *self._confirming_publishes]
        if self._out_drain is not None:
            pending.append(self._out_drain)
            self._out_drain = None
        self._draining.clear()
        self._confirming_publishes.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(self._lost_error())

    async def _channel_reopened(self, channel: Any) -> None:
        if self.closing:
            return
        try:
            self.raw = await channel.get_underlay_channel()
            self._method_cache.clear()
            await self._on_restored(self.raw)
        except Exception as exc:
            log.warning("RabbitMQ channel reopened on %s but setup failed: %s", self.url, exc)
            return
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    async def wait_ready(self) -> Any:
        """The aiormq channel, waiting up to ``connect_timeout`` while reconnecting."""
        if self.closing:
            raise TransportError("RabbitMQ transport is closed")
        try:
            await asyncio.wait_for(self.ready.wait(), self.options.connect_timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"RabbitMQ connection to {self.url} is down") from None
        if self.closing:
            raise TransportError("RabbitMQ transport is closed")
        return self.raw

    # -- publishing ----------------------------------------------------------------------

    def publish(self, routing_key: str, body: bytes, props: Properties, exchange: str = "") -> None:
        """Queue one publish (to the default exchange unless ``exchange`` names another);
        it leaves with this iteration's batch."""
        raw = self.raw
        if raw.is_closed:
            raise self._lost_error()
        number: int = raw.number
        method = self._method_cache.get((exchange, routing_key))
        if method is None:
            method = self._method_frame(exchange, routing_key, number)
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(method)
        out.append(props.header_frame(number, len(body)))
        append_body_frames(out, number, body, raw.max_content_size)

    def settle(self, raw: Any, tag: int, ok: bool, requeue: bool = False) -> bool:
        """Queue an ack (``ok``) or a nack of a delivery on ``raw``; False if it is gone."""
        if raw is not self.raw or raw.is_closed:
            return False  # the broker requeued it when that channel closed
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(settle_frame(raw.number, tag, ok, requeue))
        return True

    def _method_frame(self, exchange: str, routing_key: str, number: int) -> bytes:
        from pamqp.commands import Basic
        from pamqp.frame import marshal

        if len(self._method_cache) > 1024:
            self._method_cache.clear()
        method = marshal(Basic.Publish(exchange=exchange, routing_key=routing_key), number)
        self._method_cache[exchange, routing_key] = method
        return method

    async def drain(self) -> None:
        """Wait until the current batch was written to the socket."""
        if not self._out:
            return
        fut = self._out_drain
        if fut is None:
            fut = self._out_drain = asyncio.get_running_loop().create_future()
        await fut

    def _flush(self) -> None:
        from aiormq.abc import ChannelFrame

        out, self._out = self._out, []
        drain, self._out_drain = self._out_drain, None
        raw = self.raw
        if not out or raw is None or raw.is_closed:
            if drain is not None and not drain.done():
                drain.set_exception(self._lost_error())
            return
        if drain is not None:  # failed by _channel_closed if the writer never gets to it
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
        frame = ChannelFrame(payload=b"".join(out), should_close=False, drain_future=drain)
        queue = raw.write_queue
        try:
            queue.put_nowait(frame)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(queue.put(frame))

    def publish_confirmed(
        self, routing_key: str, body: bytes, props: Properties, exchange: str = ""
    ) -> asyncio.Future[Any]:
        """:meth:`publish`, on a channel in confirm mode, returning the future of the
        broker's confirm. Only this path publishes on that channel, so its delivery tags
        are ours to count; aiormq resolves the future when the ack (or nack: an error)
        arrives, and a channel that closes first fails it."""
        raw = self.raw
        self.publish(routing_key, body, props, exchange)
        raw.delivery_tag += 1
        confirmation: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        raw.confirmations[raw.delivery_tag] = confirmation
        self._confirming_publishes.add(confirmation)
        confirmation.add_done_callback(self._confirming_publishes.discard)
        return confirmation

    async def publish_to_queue(self, queue: str, body: bytes, properties: Any) -> None:
        """Publish to ``queue`` (declared durable if missing) and wait for the broker's
        confirm, on a second channel in confirm mode opened on first use: for the rare
        publish that must be confirmed on a link whose main channel does not confirm. A
        queue deleted since we declared it is declared again (its publish came back)."""
        from aiormq.abc import DeliveredMessage

        for _attempt in range(2):
            raw = await self._confirm_channel(queue)
            confirmed = await raw.basic_publish(
                body, exchange="", routing_key=queue, properties=properties, mandatory=True
            )
            if not isinstance(confirmed, DeliveredMessage):  # not returned: the queue has it
                return
            self._declared.discard(queue)
        raise TransportError(f"RabbitMQ returned a publish to queue {queue!r} (no such queue)")

    async def _confirm_channel(self, queue: str) -> Any:
        await self.wait_ready()
        channel, connection = self._confirming, self.connection
        if connection is None:
            raise TransportError("RabbitMQ transport is closed")
        if channel is None or channel.is_closed:
            channel = self._confirming = connection.channel(publisher_confirms=True)
            await channel.initialize()
            self._declared.clear()
        if queue not in self._declared:
            await self._declare_if_missing(queue)
            self._declared.add(queue)
        return await channel.get_underlay_channel()

    async def _declare_if_missing(self, queue: str) -> None:
        """Declare ``queue`` durable unless it exists (whatever its arguments), on throwaway
        aiormq channels: the broker closes the channel a failed passive declare ran on."""
        import aiormq

        transport = self.connection.transport if self.connection else None
        if transport is None:
            raise TransportError(f"RabbitMQ connection to {self.url} is down")
        probe = await transport.connection.channel()
        try:
            await probe.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            probe = await transport.connection.channel()
            await probe.queue_declare(queue, durable=True)
        finally:
            if not probe.is_closed:
                await probe.close()

    # -- cleanup -------------------------------------------------------------------------

    async def delete_queue(self) -> None:
        import aio_pika

        channel = self.channel
        if channel is None or channel.is_closed or not self.ready.is_set():
            connection = await aio_pika.connect(
                self.options.connection_url(self._url),
                ssl_context=self.options.client_ssl(),
                timeout=self.options.connect_timeout,
            )
            try:
                temp = await connection.channel()
                await temp.queue_delete(self.options.queue)
            finally:
                await connection.close()
            return
        await channel.queue_delete(self.options.queue)

    async def close(self) -> None:
        self.closing = True
        self.ready.clear()
        if self._out and self.raw is not None and not self.raw.is_closed:
            self._flush()
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
        self._fail_waiters()


_SETTLING: set[asyncio.Future[None]] = set()
"""The closers of interrupted connect attempts, referenced until they are done."""


async def _close_when_settled(
    attempt: asyncio.Future[Any], made: list[aio_pika.abc.AbstractRobustConnection], limit: float
) -> None:
    try:
        await asyncio.wait([attempt], timeout=limit)
    finally:
        await _close_made(attempt, made)


async def _close_made(
    attempt: asyncio.Future[Any], made: list[aio_pika.abc.AbstractRobustConnection]
) -> None:
    if not attempt.done():
        attempt.cancel()
    attempt.add_done_callback(_retrieved)
    for connection in made:
        with contextlib.suppress(Exception):
            await connection.close()


def _retrieved(attempt: asyncio.Future[Any]) -> None:
    """Mark a settled attempt's error seen: it was raised (or replaced) by the caller."""
    if not attempt.cancelled():
        attempt.exception()


def _recorded(made: list[aio_pika.abc.AbstractRobustConnection]) -> type[aio_pika.RobustConnection]:
    """A ``connection_class`` for ``connect_robust`` that keeps the connection it makes in
    ``made``, so that a connect that does not return can still be closed."""
    import aio_pika

    def make(*args: Any, **kwargs: Any) -> aio_pika.abc.AbstractRobustConnection:
        connection = aio_pika.RobustConnection(*args, **kwargs)
        made.append(connection)
        return connection

    return cast("type[aio_pika.RobustConnection]", make)  # called like the class
