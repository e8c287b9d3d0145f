"""The client half: requests with replies read by explicit partition assignment.

Replies to requests for ``<route>`` come back on ``<route>.reply``. Instead of NestJS's
consumer group (whose rebalances lose replies), each client instance *assigns* itself one
partition of each reply topic (no group, so no rebalance), seeks it to its end before its
first request is produced, and names it in ``kafka_replyPartition``. Several instances pick
different partitions at random, so they mostly do not read each other's replies; every
instance keeps only the correlation ids it is waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]

from polybus.abc import ConnectionStatus, Release, ReplySink
from polybus.errors import ProtocolError, RequestTimeout, TransportError
from polybus.packets import MISSING, Event, Record, Reply, Request, unreadable_reply
from polybus.serializers import Serializer

from ._admin import TopicAdmin
from ._common import (
    CORRELATION_ID,
    DEADLINE,
    ERRORS,
    FEATURES,
    NEST_ERR,
    NEST_IS_DISPOSED,
    REPLY_PARTITION,
    REPLY_TOPIC,
    TYPE_HINT,
    Codec,
    Headers,
    OutRecord,
    check_topic,
    close_quietly,
    cluster_reachable,
    fetched_batches,
    log,
    produce,
)
from ._options import KafkaOptions
from ._replies import ReplyPartitions

__all__ = ["KafkaClientTransport"]

HEALTH_INTERVAL = 0.5
"""Seconds between checks that a broker is reachable (to fail pending requests promptly)."""


class _Route:
    """A route whose reply partition is assigned and positioned: ready for requests."""

    __slots__ = ("headers", "partition", "reply_topic", "topic")

    def __init__(self, topic: str, reply_topic: str, partition: int) -> None:
        self.topic = topic
        self.reply_topic = reply_topic
        self.partition = partition
        self.headers: Headers = [
            (REPLY_TOPIC, reply_topic.encode()),
            (REPLY_PARTITION, str(partition).encode()),
        ]


class KafkaClientTransport:
    """Produces requests and events; reads replies from assigned reply-topic partitions."""

    features = FEATURES

    def __init__(self, options: KafkaOptions, serializer: Serializer) -> None:
        self.options = options
        self._codec = Codec(serializer, hints=options.type_hints)
        self._sink: ReplySink | None = None
        self._producer: Any = None
        self._consumer: Any = None
        self._admin = TopicAdmin(options, "client")
        self._routes: dict[str, _Route] = {}
        self._topics: set[str] = set()
        self._preparing: dict[str, asyncio.Task[Any]] = {}
        self._replies: ReplyPartitions | None = None
        self._inflight: dict[str, bool] = {}
        """Request id → whether a non-final item arrived (its null completion is no item)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._seed = random.randrange(1 << 30)
        self._lost = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self, sink: ReplySink) -> None:
        options = self.options
        producer = AIOKafkaProducer(**options.producer_kwargs("client"))
        consumer = AIOKafkaConsumer(**options.consumer_kwargs("client"))
        try:
            with ERRORS("kafka: cannot connect to %s", options.describe()):
                await asyncio.gather(producer.start(), consumer.start())
        except Exception:
            await asyncio.gather(producer.stop(), consumer.stop(), return_exceptions=True)
            raise
        self._sink = sink
        self._producer = producer
        self._consumer = consumer
        self._replies = ReplyPartitions(consumer, self._admin)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]

    async def close(self) -> None:
        self._closed = True
        self._sink = None
        tasks = [*self._tasks, *self._preparing.values()]
        self._tasks = []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        producer, consumer = self._producer, self._consumer
        self._producer = self._consumer = None
        self._replies = None
        for part in (consumer, producer):
            if part is not None:
                await close_quietly(part.stop())
        await self._admin.close()
        self._routes.clear()
        self._inflight.clear()

    # -- requests -----------------------------------------------------------------------

    async def request(self, request: Request) -> Release:
        route = self._routes.get(request.route)
        if route is None:
            route = await self._prepare(request.route, reply=True, deadline=request.deadline)
        codec = self._codec
        out = codec.message(request.data, request.headers)
        if request.record is not None:
            _apply_record_options(codec, request.record, out)
        rid = request.id
        headers = out.headers
        headers.append((CORRELATION_ID, rid.encode()))
        headers.extend(route.headers)
        if request.deadline is not None:
            headers.append((DEADLINE, repr(request.deadline).encode()))
        inflight = self._inflight
        inflight[rid] = False
        try:
            future = await self._produce(route.topic, out)
        except BaseException:
            inflight.pop(rid, None)
            raise
        future.add_done_callback(lambda fut: self._delivered(rid, fut))

        def release() -> None:
            inflight.pop(rid, None)

        return release

    async def publish_event(self, event: Event) -> None:
        if event.route not in self._topics:
            await self._prepare(event.route, reply=False)
        codec = self._codec
        out = codec.message(event.data, event.headers)
        if event.record is not None:
            _apply_record_options(codec, event.record, out)
        future = await self._produce(event.route, out)
        with ERRORS(f"kafka: cannot publish to {event.route!r}"):
            await future

    async def _produce(self, topic: str, out: OutRecord) -> asyncio.Future[Any]:
        producer = self._producer
        if producer is None:
            raise TransportError("kafka client is closed")
        if out.value is not None:
            self.options.check_size(out.value)
        return await produce(producer, topic, out, action="send to")

    def _delivered(self, rid: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            error: BaseException = TransportError(
                "kafka: request was not delivered (producer closed)"
            )
        else:
            exc = future.exception()
            if exc is None:
                return
            error = ERRORS.error(exc, "kafka: cannot deliver the request")
        sink = self._sink
        if sink is not None:
            sink.on_request_error(rid, error)

    # -- topics and the reply assignment ------------------------------------------------

    async def _prepare(self, route: str, *, reply: bool, deadline: float | None = None) -> _Route:
        """Set ``route``'s topics (and reply partition) up once, shared by concurrent callers.

        A request waits for it until its ``deadline`` at most (its timeout only starts once
        ``request()`` returns): a broker that does not answer gives ``RequestTimeout``."""
        key = route if reply else "\x00" + route
        task = self._preparing.get(key)
        if task is None:
            check_topic(route)
            if reply:
                check_topic(route + ".reply")
            if self._closed or self._consumer is None:
                raise TransportError("kafka client is closed")
            coro = self._setup(route) if reply else self._setup_event(route)
            task = asyncio.get_running_loop().create_task(coro)
            self._preparing[key] = task
            task.add_done_callback(lambda done: self._prepared(key, done))
        if deadline is None:
            result: _Route = await asyncio.shield(task)
            return result
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.time()))
        except asyncio.TimeoutError:
            if not task.done():
                raise RequestTimeout(f"kafka: could not set up {route!r} in time") from None
            raise

    def _prepared(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._preparing.get(key) is task:
            del self._preparing[key]
        if not task.cancelled():
            task.exception()  # retrieved: the awaiting callers report it

    async def _setup_event(self, route: str) -> None:
        await self._admin.ensure([route])
        self._topics.add(route)

    async def _setup(self, route: str) -> _Route:
        reply_topic = route + ".reply"
        await self._admin.ensure([route, reply_topic])
        ids = await self._admin.partitions(reply_topic)
        pinned = self.options.reply_partition
        partition = pinned if pinned is not None and pinned in ids else ids[self._seed % len(ids)]
        replies = self._replies
        if replies is None:
            raise TransportError("kafka client is closed")
        await replies.add(reply_topic, partition)
        ready = _Route(route, reply_topic, partition)
        self._routes[route] = ready
        self._topics.add(route)
        return ready

    # -- replies ------------------------------------------------------------------------

    async def _read(self) -> None:
        on_record = self._on_record
        replies = self._replies
        assert replies is not None
        async for batches in fetched_batches(self._consumer, "reading replies", 0.1):
            for tp, records in batches.items():
                for record in replies.taken(tp, records):
                    on_record(record)

    def _on_record(self, record: Any) -> None:
        headers: dict[str, bytes | None] = dict(record.headers)  # a repeated header: the last
        raw_id = headers.get(CORRELATION_ID)
        if raw_id is None:
            return
        rid = raw_id.decode("utf-8", "replace")
        kind = headers.get(TYPE_HINT)
        err: Any = headers.get(NEST_ERR, MISSING)
        disposed = NEST_IS_DISPOSED in headers
        streamed = self._inflight.get(rid)
        sink = self._sink
        if streamed is None or sink is None:
            return  # another caller's reply (or one that ended)
        codec = self._codec
        raw = record.value
        # the correlation header names the request: an unreadable reply fails it at once
        try:
            if err is not MISSING:
                err = codec.decode(err)
            else:
                if raw is not None:
                    self.options.check_size(raw, "reply")
                value = codec.decode(raw, kind)
        except ProtocolError as exc:
            unreadable_reply(sink, exc, len(raw or b""), record.topic, rid)
            return
        if err is not MISSING:
            sink.on_reply(Reply(rid, MISSING, err, True))
            return
        if disposed:
            if value is None and kind is None and streamed:
                value = MISSING  # NestJS's completion travelling alone: no extra null item
            sink.on_reply(Reply(rid, value, None, True))
        else:
            self._inflight[rid] = True
            sink.on_reply(Reply(rid, None if value is MISSING else value))

    # -- connection state ---------------------------------------------------------------

    async def _watch(self) -> None:
        """Report a lost cluster (failing pending requests) and its return."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            reachable = await cluster_reachable(self._producer)
            sink = self._sink
            if sink is None:
                return
            consumer = self._consumer
            gone = [
                route
                for route, ready in self._routes.items()
                if not consumer.partitions_for_topic(ready.reply_topic)
            ]
            if reachable and gone and not self._lost:
                # a reply topic vanished (a broker that lost its data): set it up again
                log.warning("kafka: reply topics of %s are gone; setting them up again", gone)
                for route in gone:
                    self._routes.pop(route, None)
                    self._topics.discard(route)
            if reachable and self._lost:
                self._lost = False
                self._routes.clear()  # topics and positions are set up again on next use
                self._topics.clear()
                sink.on_status(ConnectionStatus.CONNECTED)
            elif reachable:
                await self._resync_replies()
            elif not self._lost:
                self._lost = True
                sink.on_status(ConnectionStatus.RECONNECTING)
                sink.on_connection_lost(
                    TransportError(f"kafka: lost the connection to {self.options.describe()}")
                )

    async def _resync_replies(self) -> None:
        replies = self._replies
        if replies is None or not self._routes:
            return
        routes = self._routes.values()
        partitions = [TopicPartition(ready.reply_topic, ready.partition) for ready in routes]
        topics = [*self._topics, *(ready.reply_topic for ready in routes)]
        producer = self._producer
        if await replies.resync(partitions, topics) and producer is not None:
            producer.client.force_metadata_update()  # partition counts of re-created topics

    def __repr__(self) -> str:
        return f"KafkaClientTransport({self.options.describe()})"


def _apply_record_options(codec: Codec, record: Record, out: OutRecord) -> None:
    if record.key is not None:
        out.key = codec.header(record.key)
    if record.partition is not None:
        out.partition = record.partition
