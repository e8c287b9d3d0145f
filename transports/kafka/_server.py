"""The server half: a consumer group per service, at-least-once, ordered per partition.

The server consumes every handler topic in the group ``group_id + postfix_id`` (instances
of one service compete for partitions). Each assigned partition has a worker that hands its
records to the microservice in offset order: records of an event topic one at a time
(``ordered_events``), records of a request topic concurrently. An offset is committed only
once the handlers of it and of every record before it are over (``context.settle``), so a
crash or a rebalance re-delivers unfinished records instead of losing them. On a rebalance
the revoked partitions stop taking records, their in-flight handlers get a moment to finish
and what finished is committed before the partitions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

from polybus.abc import Context, MessageSink, RouteSpec
from polybus.errors import PolybusError, ProtocolError, TransportError
from polybus.packets import MISSING, Reply, parse_deadline_value
from polybus.serializers import Serializer

from ._admin import TopicAdmin
from ._common import (
    CLOSE_TIMEOUT,
    CORRELATION_ID,
    DEADLINE,
    DISPOSED_VALUE,
    FEATURES,
    NEST_ERR,
    NEST_IS_DISPOSED,
    REPLY_PARTITION,
    REPLY_TOPIC,
    TYPE_HINT,
    Codec,
    check_topic,
    close_quietly,
    cluster_reachable,
    fetched_batches,
    partition_of,
    produce,
    transport_error,
)
from ._options import KafkaOptions

__all__ = ["KafkaContext", "KafkaServerTransport"]

log = logging.getLogger("polybus.kafka")

_READY_TIMEOUT = 60.0
_WATCH_INTERVAL = 1.0
_COMMIT_TIMEOUT = 5.0


class _Partition:
    """One assigned partition: its queue of fetched records and its commit watermark."""

    __slots__ = (
        "active",
        "commit_at",
        "committed",
        "drained",
        "finished",
        "next_offset",
        "ordered",
        "paused",
        "pending",
        "queue",
        "tp",
        "wake",
        "worker",
    )

    def __init__(self, tp: Any, ordered: bool, position: int = -1) -> None:
        self.tp = tp
        self.ordered = ordered
        self.queue: deque[Any] = deque()
        self.pending: deque[int] = deque()
        """Offsets handed to the microservice whose handling is not over, in order."""
        self.finished: set[int] = set()
        """Offsets whose handling is over while an earlier one's is not."""
        self.next_offset = position
        self.commit_at = position
        self.committed = position
        self.active = True
        self.paused = False
        self.wake: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.worker: asyncio.Task[None] | None = None

    def start(self, position: int) -> int:
        """The position is known (-1: unknown, the first finished record sets it); returns
        where the partition starts.

        Records fetched while the position was asked for start it: by the time aiokafka's
        ``position()`` answers, handing them over may have moved it past them, and taking
        that later offset would skip them and commit past them."""
        queue = self.queue
        if queue and (position < 0 or queue[0].offset < position):
            position = queue[0].offset
        self.commit_at = self.committed = position
        self.next_offset = max(self.next_offset, position)
        return position

    def finish(self, offset: int) -> bool:
        """Handling of ``offset`` is over; True when the commit watermark moved."""
        pending = self.pending
        if not pending or pending[0] != offset:
            self.finished.add(offset)
            return False
        pending.popleft()
        commit_at = offset + 1
        finished = self.finished
        while pending and pending[0] in finished:
            head = pending.popleft()
            finished.discard(head)
            commit_at = head + 1
        self.commit_at = commit_at
        if not pending and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        return True

    def notify(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class KafkaContext(Context):
    """Context of a Kafka record.

    ``topic``, ``partition``, ``offset``: where the record is; ``key``: its key decoded like
    a value (None when absent); ``headers``: every header, decoded with NestJS's rule (text,
    JSON for values starting with ``{``/``[``, bytes for values starting with ``0x00``);
    ``record``: aiokafka's ``ConsumerRecord`` itself.
    """

    __slots__ = (
        "_done",
        "_headers",
        "_part",
        "_reply_id",
        "_sends",
        "_server",
        "_settled",
        "key",
        "offset",
        "partition",
        "record",
        "reply_partition",
        "reply_topic",
        "topic",
    )
    transport_name = "kafka"
    _headers: dict[str, Any] | None

    def __init__(
        self,
        server: KafkaServerTransport,
        part: _Partition,
        record: Any,
        data: Any,
        id: Any,
        deadline: float | None,
        key: Any,
        reply_to: tuple[str, int | None, bytes] | None,
    ) -> None:
        super().__init__(record.topic, data, id, None, deadline)
        self._server = server
        self._part = part
        self._settled = False
        self._sends: list[asyncio.Future[Any]] | None = None
        self._done: asyncio.Future[None] | None = None
        self.record = record
        self.topic: str = record.topic
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.key = key
        if reply_to is None:
            self.reply_topic: str | None = None
            self.reply_partition: int | None = None
            self._reply_id = b""
        else:
            self.reply_topic, self.reply_partition, self._reply_id = reply_to

    @property
    def headers(self) -> dict[str, Any]:
        """Every header of the record, decoded on first access."""
        headers = self._headers
        if headers is None:
            parse = self._server._codec.parse
            headers = {str(name): parse(raw) for name, raw in self.record.headers}
            self._headers = headers
        return headers

    @headers.setter
    def headers(self, value: dict[str, Any] | None) -> None:
        self._headers = value

    async def send_reply(self, reply: Reply) -> None:
        if self.reply_topic is not None:
            await self._server._reply(self, self.reply_topic, reply)

    async def settle(self, ok: bool) -> None:
        if not self._settled:
            self._settled = True
            self._server._settle(self)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, server: KafkaServerTransport) -> None:
        self._server = server

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._server._revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._server._assign(assigned)


class KafkaServerTransport:
    """Consumes the handler topics in a consumer group; replies with a shared producer."""

    features = FEATURES

    def __init__(self, options: KafkaOptions, serializer: Serializer) -> None:
        self.options = options
        self._codec = Codec(serializer, options.keep_binary, options.type_hints)
        self._admin = TopicAdmin(options, "server")
        self._sink: MessageSink | None = None
        self._producer: Any = None
        self._consumer: Any = None
        self._kinds: dict[str, str] = {}
        self._parts: dict[Any, _Partition] = {}
        self._dirty: set[_Partition] = set()
        self._committer: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[None] | None = None
        self._stopping = False

    @property
    def group_id(self) -> str:
        return self.options.group_id + self.options.postfix("server")

    @property
    def assignment(self) -> set[Any]:
        """The partitions this instance consumes now."""
        return set(self._parts)

    # -- lifecycle ----------------------------------------------------------------------

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        kinds: dict[str, str] = {}
        for spec in routes:
            check_topic(spec.route)
            if spec.kind == "message":
                check_topic(spec.route + ".reply")
            kinds[spec.route] = spec.kind
        if not kinds:
            raise TransportError("kafka: a server needs at least one handler to subscribe to")
        self._kinds = kinds
        self._sink = sink
        self._stopping = False
        options = self.options
        topics = list(kinds)
        await self._admin.ensure(
            [*topics, *(t + ".reply" for t, k in kinds.items() if k == "message")]
        )
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        producer = AIOKafkaProducer(**options.producer_kwargs("server"))
        consumer = AIOKafkaConsumer(**options.consumer_kwargs("server"))
        try:
            await asyncio.gather(producer.start(), consumer.start())
            await self._wait_metadata(consumer, topics)
        except Exception as exc:
            await asyncio.gather(producer.stop(), consumer.stop(), return_exceptions=True)
            raise transport_error(f"connect to {options.describe()}", exc) from exc
        self._producer = producer
        self._consumer = consumer
        consumer.subscribe(topics, listener=_Listener(self))
        self._tasks = [loop.create_task(self._fetch()), loop.create_task(self._watch())]
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _READY_TIMEOUT)
        except asyncio.TimeoutError:
            await self.close()
            raise TransportError(
                f"kafka: group {self.group_id!r} got no partition assignment"
                f" within {_READY_TIMEOUT:g}s"
            ) from None

    async def _wait_metadata(self, consumer: Any, topics: list[str]) -> None:
        """Wait until the consumer's metadata lists every topic (just created ones too), so the
        first assignment covers them all."""
        for attempt in range(100):
            await consumer.topics()
            if all(consumer.partitions_for_topic(t) for t in topics):
                return
            await asyncio.sleep(min(0.02 * (attempt + 1), 0.5))
        missing = [t for t in topics if not consumer.partitions_for_topic(t)]
        raise TransportError(f"kafka: topics {missing} do not appear in the cluster metadata")

    async def stop(self) -> None:
        """Stop taking records; in-flight handlers can still reply and commit."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for part in self._parts.values():
            part.queue.clear()
            part.notify()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        await self.stop()
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.flush(), CLOSE_TIMEOUT)
                await asyncio.sleep(0)  # delivery callbacks finish their records
            committer = self._committer
            if committer is not None:
                with contextlib.suppress(BaseException):
                    await committer
            await self._commit(
                [p for p in self._parts.values() if p.commit_at > p.committed], consumer
            )
            for part in self._parts.values():
                part.active = False
                if part.worker is not None:
                    part.worker.cancel()
            self._parts.clear()
            await close_quietly(consumer.stop())
        if producer is not None:
            await close_quietly(producer.stop())
        await self._admin.close()
        self._sink = None

    async def delete_resources(self) -> None:
        """Delete the topics this server created (request, event and reply topics)."""
        created = sorted(self._admin.created)
        try:
            await self._admin.delete(created)
            self._admin.created.clear()
        finally:
            if self._consumer is None:
                await self._admin.close()

    # -- rebalance ----------------------------------------------------------------------

    async def _assign(self, assigned: Any) -> None:
        consumer = self._consumer
        tps = list(assigned)
        ordered = self.options.ordered_events
        # The partitions exist before the first await: aiokafka fetches them already, and
        # the records the fetch loop gets meanwhile must be queued, not dropped.
        parts = [_Partition(tp, ordered and self._kinds.get(tp.topic) == "event") for tp in tps]
        for part in parts:
            self._parts[part.tp] = part
        # Bounded, like every commit: this runs inside the group's join, and aiokafka retries
        # some errors forever (a topic gone with a broker's data), which would stall the group.
        try:
            positions: list[int | None] = list(
                await asyncio.wait_for(
                    asyncio.gather(*(consumer.position(tp) for tp in tps)), _COMMIT_TIMEOUT
                )
            )
        except (Exception, asyncio.TimeoutError) as exc:
            log.warning("kafka: group %s: positions unknown: %r", self.group_id, exc)
            positions = [None] * len(tps)
        known: dict[Any, int] = {}
        for part, position in zip(parts, positions, strict=True):
            if part.active and self._parts.get(part.tp) is part:
                start = part.start(-1 if position is None else position)
                if start >= 0:
                    known[part.tp] = start
        if known:
            # A partition without committed offset gets one now: a record produced after
            # listen() returned is handled even if the partition moves before it is read.
            try:
                await asyncio.wait_for(consumer.commit(known), _COMMIT_TIMEOUT)
            except (Exception, asyncio.TimeoutError) as exc:
                log.warning("kafka: group %s: commit on assignment failed: %r", self.group_id, exc)
        loop = asyncio.get_running_loop()
        for part in parts:
            if part.active and self._parts.get(part.tp) is part:
                part.worker = loop.create_task(self._work(part))
        log.debug("kafka: group %s assigned %s", self.group_id, known)
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    async def _revoke(self, revoked: Any) -> None:
        parts = [self._parts.pop(tp) for tp in list(revoked) if tp in self._parts]
        if not parts:
            return
        for part in parts:
            part.queue.clear()
            part.notify()
        consumer = self._consumer
        # The coordinator forgot this member (a session that expired, a broker that lost its
        # state): the partitions are lost, not revoked. A commit would be refused, so none is
        # waited for; the topics are made sure of before the group is joined again.
        lost = _membership_lost(consumer)
        if lost:
            log.warning(
                "kafka: group %s: the coordinator no longer knows this member; rejoining",
                self.group_id,
            )
            await self._ensure_topics()
        busy = []
        loop = asyncio.get_running_loop()
        for part in parts:
            if part.pending and not lost:
                part.drained = loop.create_future()
                busy.append(part.drained)
        if busy:
            timeout = (self.options.rebalance_timeout_ms or self.options.session_timeout_ms) / 2000
            await asyncio.wait(busy, timeout=timeout)
        for part in parts:
            part.active = False
            if part.worker is not None:
                part.worker.cancel()
        if consumer is not None and not lost:
            await self._commit([p for p in parts if p.commit_at > p.committed], consumer)
        log.debug(
            "kafka: group %s revoked %s",
            self.group_id,
            {p.tp: (p.commit_at, p.committed, list(p.pending)) for p in parts},
        )

    # -- intake -------------------------------------------------------------------------

    async def _fetch(self) -> None:
        consumer = self._consumer
        parts = self._parts
        limit = self.options.max_partition_queue
        what = f"group {self.group_id}: fetching"
        async for batches in fetched_batches(consumer, what, 0.5):
            for tp, records in batches.items():
                part = parts.get(tp)
                if part is None or not part.active or not records:
                    continue
                queue = part.queue
                start = part.next_offset
                for record in records:
                    if record.offset >= start:
                        queue.append(record)
                part.next_offset = max(start, records[-1].offset + 1)
                if len(queue) >= limit and not part.paused:
                    part.paused = True
                    consumer.pause(tp)
                part.notify()

    async def _work(self, part: _Partition) -> None:
        loop = asyncio.get_running_loop()
        queue = part.queue
        while part.active and not self._stopping:
            if not queue:
                if part.paused:
                    part.paused = False
                    with contextlib.suppress(Exception):
                        self._consumer.resume(part.tp)
                part.wake = loop.create_future()
                await part.wake
                part.wake = None
                continue
            record = queue.popleft()
            part.pending.append(record.offset)
            context = self._context(part, record)
            sink = self._sink
            if context is None or sink is None:
                self._finish(part, record.offset)
                continue
            if part.ordered:
                context._done = loop.create_future()
            await sink(context)
            if context._done is not None:
                await context._done

    def _context(self, part: _Partition, record: Any) -> KafkaContext | None:
        codec = self._codec
        rid: bytes | None = None
        reply_topic: bytes | None = None
        reply_partition: bytes | None = None
        deadline: float | None = None
        kind: bytes | None = None
        try:
            for name, raw in record.headers:
                if name == TYPE_HINT:
                    kind = raw
                elif name == CORRELATION_ID:
                    rid = raw
                elif name == REPLY_TOPIC:
                    reply_topic = raw
                elif name == REPLY_PARTITION:
                    reply_partition = raw
                elif name == DEADLINE and raw:
                    deadline = parse_deadline_value(raw)
            data = codec.decode_data(record.value, kind)
            key = codec.parse(record.key) if record.key else None
        except ProtocolError as exc:
            log.warning(
                "kafka: dropping undecodable record %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return None
        reply_to = None
        request_id: Any = MISSING
        if rid and reply_topic and self._kinds.get(record.topic) != "event":
            request_id = rid.decode("utf-8", "replace")
            reply_to = (reply_topic.decode("utf-8", "replace"), partition_of(reply_partition), rid)
        return KafkaContext(self, part, record, data, request_id, deadline, key, reply_to)

    # -- replies and commits ------------------------------------------------------------

    async def _reply(self, context: KafkaContext, topic: str, reply: Reply) -> None:
        producer = self._producer
        if producer is None:
            raise TransportError("kafka server is closed")
        codec = self._codec
        key, value, headers, partition, timestamp = codec.message(reply.response, None)
        headers.append((CORRELATION_ID, context._reply_id))
        if reply.err:
            headers.append((NEST_ERR, codec.err_header(reply.err)))
        if reply.disposed:
            headers.append((NEST_IS_DISPOSED, DISPOSED_VALUE))
        if context.reply_partition is not None:
            partition = context.reply_partition
        if value is not None:
            self.options.check_size(value, "reply")
        future = await produce(
            producer, topic, key, value, headers, partition, timestamp, action="reply to"
        )
        # Delivery is awaited by settle(): the offset is committed once the replies are out.
        if context._sends is None:
            context._sends = [future]
        else:
            context._sends.append(future)

    def _settle(self, context: KafkaContext) -> None:
        sends = context._sends
        if sends:
            waiting = [f for f in sends if not f.done()]
            if waiting:
                remaining = [len(waiting)]

                def delivered(future: asyncio.Future[Any]) -> None:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        self._delivered(context)

                for future in waiting:
                    future.add_done_callback(delivered)
            else:
                self._delivered(context)
        else:
            self._finish(context._part, context.offset)
        done = context._done
        if done is not None and not done.done():
            done.set_result(None)

    def _delivered(self, context: KafkaContext) -> None:
        for future in context._sends or ():
            exc = None if future.cancelled() else future.exception()
            if exc is not None or future.cancelled():
                log.warning(
                    "kafka: reply to %s (request %s) was not delivered: %r",
                    context.reply_topic,
                    context.id,
                    exc or "cancelled",
                )
        context._sends = None
        self._finish(context._part, context.offset)

    def _finish(self, part: _Partition, offset: int) -> None:
        if part.finish(offset) and part.active:
            self._dirty.add(part)
            if self._committer is None:
                self._committer = asyncio.get_running_loop().create_task(self._commit_loop())

    async def _commit_loop(self) -> None:
        try:
            while self._dirty:
                # one commit for every record finished meanwhile (few commit requests)
                await asyncio.sleep(self.options.commit_interval_ms / 1000)
                parts = [p for p in self._dirty if p.active and p.commit_at > p.committed]
                self._dirty.clear()
                consumer = self._consumer
                if consumer is None:
                    return
                await self._commit(parts, consumer)
        finally:
            self._committer = None

    async def _commit(self, parts: list[_Partition], consumer: Any) -> None:
        if not parts:
            return
        offsets = {p.tp: p.commit_at for p in parts}
        try:
            # bounded: aiokafka retries some errors forever (a topic deleted under it)
            await asyncio.wait_for(consumer.commit(offsets), _COMMIT_TIMEOUT)
        except (Exception, asyncio.TimeoutError) as exc:
            log.warning("kafka: group %s: commit of %s failed: %r", self.group_id, offsets, exc)
            return
        for part in parts:
            part.committed = max(part.committed, offsets[part.tp])

    # -- broker restarts ----------------------------------------------------------------

    async def _watch(self) -> None:
        """Log a lost cluster; when a topic of this server is gone (a broker that lost its
        data, an operator), create it again and refresh metadata so the group gets it."""
        lost = False
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            reachable = await cluster_reachable(self._producer)
            if not reachable:
                if not lost:
                    lost = True
                    log.warning(
                        "kafka: group %s lost the connection to %s",
                        self.group_id,
                        self.options.describe(),
                    )
                continue
            consumer = self._consumer
            if consumer is None:
                return
            if lost:
                lost = False
                log.info(
                    "kafka: group %s reconnected to %s", self.group_id, self.options.describe()
                )
            elif all(consumer.partitions_for_topic(topic) for topic in self._kinds):
                continue
            # after a reconnect too: the broker may have come back without its data
            await self._ensure_topics()

    async def _ensure_topics(self) -> None:
        """Create the topics of this server again where they are gone (bounded), then
        refresh the consumer's metadata so that the group's assignment covers them."""
        kinds = self._kinds
        try:
            await asyncio.wait_for(
                self._admin.ensure(
                    [*kinds, *(t + ".reply" for t, k in kinds.items() if k == "message")]
                ),
                _COMMIT_TIMEOUT,
            )
        except (PolybusError, asyncio.TimeoutError) as exc:
            log.warning("kafka: group %s: re-creating topics failed: %r", self.group_id, exc)
        client = getattr(self._consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(client.force_metadata_update(), _COMMIT_TIMEOUT)

    def __repr__(self) -> str:
        return f"KafkaServerTransport({self.options.describe()}, group={self.group_id!r})"


def _membership_lost(consumer: Any) -> bool:
    """Whether the group coordinator reset this member (unknown member id, stale
    generation): aiokafka then rejoins with no generation (-1)."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    return isinstance(generation, int) and generation < 0
