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
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

from polybus.abc import ConnectionReporter, ConnectionStatus, MessageSink, RouteSpec
from polybus.errors import PolybusError, TransportError
from polybus.serializers import Serializer

from ._admin import TopicAdmin
from ._assignor import SERVER_ASSIGNORS
from ._common import (
    CLOSE_TIMEOUT,
    ERRORS,
    FEATURES,
    Codec,
    check_topic,
    close_quietly,
    cluster_reachable,
    fetched_batches,
    log,
)
from ._context import read_record
from ._holes import Holes
from ._options import KafkaOptions
from ._outlet import Outlet
from ._partition import COMMIT_TIMEOUT, Committer, Partition

__all__ = ["KafkaServerTransport"]

_READY_TIMEOUT = 60.0
_WATCH_INTERVAL = 1.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, server: KafkaServerTransport) -> None:
        self._server = server

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._server._revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._server._assign(assigned)


class KafkaServerTransport(ConnectionReporter):
    """Consumes the handler topics in a consumer group; replies with a shared producer."""

    features = FEATURES

    def __init__(self, options: KafkaOptions, serializer: Serializer) -> None:
        self.options = options
        self._admin = TopicAdmin(options, "server")
        self._sink: MessageSink | None = None
        self._consumer: Any = None
        self._kinds: dict[str, str] = {}
        self._parts: dict[Any, Partition] = {}
        self._left: dict[Any, tuple[int, int]] = {}
        """Partition → where this server left it (commit watermark, newest timestamp)."""
        self._commits = Committer(
            self.group_id, options.commit_interval_ms / 1000, lambda: self._consumer
        )
        codec = Codec(serializer, options.keep_binary, options.type_hints)
        self._outlet = Outlet(options, codec, self._admin, self._commits)
        postfix = options.postfix("server")
        if postfix and options.group_id.endswith(postfix):
            log.warning(
                "kafka: group_id %r already ends with %r, which a server appends (as NestJS"
                " does): the consumer group is %r",
                options.group_id,
                postfix,
                self.group_id,
            )
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
        consumer_kwargs = options.consumer_kwargs("server")
        consumer_kwargs.setdefault("partition_assignment_strategy", SERVER_ASSIGNORS)
        consumer = AIOKafkaConsumer(**consumer_kwargs)
        try:
            with ERRORS("kafka: cannot connect to %s", options.describe()):
                await asyncio.gather(producer.start(), consumer.start())
                await self._wait_metadata(consumer, topics)
        except BaseException:  # cancelled too: neither may stay open
            await asyncio.gather(producer.stop(), consumer.stop(), return_exceptions=True)
            raise
        self._outlet.producer = producer
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
        consumer, producer = self._consumer, self._outlet.producer
        self._consumer = self._outlet.producer = None
        if consumer is not None:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.flush(), CLOSE_TIMEOUT)
                await asyncio.sleep(0)  # delivery callbacks finish their records
            await self._commits.close(list(self._parts.values()), consumer)
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
        parts = [Partition(tp, ordered and self._kinds.get(tp.topic) == "event") for tp in tps]
        for part in parts:
            self._parts[part.tp] = part
        if self._ready is not None and self._ready.done():
            await self._resume(consumer, tps)
        # Bounded, like every commit: this runs inside the group's join, and aiokafka retries
        # some errors forever (a topic gone with a broker's data), which would stall the group.
        try:
            positions: list[int | None] = list(
                await asyncio.wait_for(
                    asyncio.gather(*(consumer.position(tp) for tp in tps)), COMMIT_TIMEOUT
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
                await asyncio.wait_for(consumer.commit(known), COMMIT_TIMEOUT)
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

    async def _resume(self, consumer: Any, tps: list[Any]) -> None:
        """Where a partition the group has no committed offset for starts, once listen()
        returned: a broker that came back without its data, or a partition added since.

        Every record of such a log that is newer than what this server last handled on the
        partition was produced after the server subscribed, so it must be read: the
        partition starts at the first such record (by timestamp), or where the server left
        it if that is earlier; a partition the server never had starts at its beginning.
        The default (``auto_offset_reset="latest"``) would skip every record produced
        between the broker's return and the group's rejoin."""
        try:
            committed = await asyncio.wait_for(
                asyncio.gather(*(consumer.committed(tp) for tp in tps)), COMMIT_TIMEOUT
            )
            fresh = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
            if not fresh:
                return
            since = {tp: max(self._left.get(tp, (-1, 0))[1], 0) for tp in fresh}
            first, end, newer = await asyncio.wait_for(
                asyncio.gather(
                    consumer.beginning_offsets(fresh),
                    consumer.end_offsets(fresh),
                    consumer.offsets_for_times(since),
                ),
                COMMIT_TIMEOUT,
            )
        except (Exception, asyncio.TimeoutError) as exc:
            log.warning("kafka: group %s: start offsets unknown: %r", self.group_id, exc)
            return
        for tp in fresh:
            found = newer.get(tp)
            start = end[tp] if found is None else found.offset
            left = self._left.get(tp, (-1, 0))[0]
            if left >= 0:
                start = min(start, left)
            consumer.seek(tp, max(first[tp], start))
        log.info(
            "kafka: group %s: no committed offset for %s: read from where this server left",
            self.group_id,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in fresh),
        )

    async def _revoke(self, revoked: Any) -> None:
        parts = [self._parts.pop(tp) for tp in list(revoked) if tp in self._parts]
        if not parts:
            return
        for part in parts:
            if part.commit_at >= 0:
                self._left[part.tp] = (part.commit_at, part.newest_timestamp)
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
            await self._commits.commit(parts, consumer)
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
        holes = Holes(consumer)
        async for batches in fetched_batches(consumer, what, 0.5):
            for tp, fetched in batches.items():
                part = parts.get(tp)
                if part is None or not part.active:
                    continue
                start = part.next_offset
                records = holes.cut(tp, fetched, start if start >= 0 else None)
                if not records:
                    continue
                queue = part.queue
                for record in records:
                    if record.offset >= start:
                        queue.append(record)
                part.next_offset = max(start, records[-1].offset + 1)
                if len(queue) >= limit and not part.paused:
                    part.paused = True
                    consumer.pause(tp)
                part.notify()

    async def _work(self, part: Partition) -> None:
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
            part.newest_timestamp = max(part.newest_timestamp, record.timestamp)
            event = self._kinds.get(record.topic) == "event"
            context = read_record(self._outlet, part, record, event)
            sink = self._sink
            if context is None or sink is None:
                self._commits.finished(part, record.offset)
                continue
            await sink(context)
            await context.settled()

    # -- broker restarts ----------------------------------------------------------------

    async def _watch(self) -> None:
        """Log a lost cluster; when a topic of this server is gone (a broker that lost its
        data, an operator), create it again and refresh metadata so the group gets it."""
        lost = False
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            reachable = await cluster_reachable(self._outlet.producer)
            if not reachable:
                if not lost:
                    lost = True
                    self.report_connection(ConnectionStatus.RECONNECTING)
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
                self.report_connection(ConnectionStatus.CONNECTED)
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
                COMMIT_TIMEOUT,
            )
        except (PolybusError, asyncio.TimeoutError) as exc:
            log.warning("kafka: group %s: re-creating topics failed: %r", self.group_id, exc)
        client = getattr(self._consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(client.force_metadata_update(), COMMIT_TIMEOUT)

    def __repr__(self) -> str:
        options = self.options
        return (
            f"KafkaServerTransport({options.describe()}, group={self.group_id!r}"
            f" = group_id {options.group_id!r} + {options.postfix('server')!r})"
        )


def _membership_lost(consumer: Any) -> bool:
    """Whether the group coordinator reset this member (unknown member id, stale
    generation): aiokafka then rejoins with no generation (-1)."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", None)
    return isinstance(generation, int) and generation < 0
