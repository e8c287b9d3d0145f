"""Raw Kafka ceiling on aiokafka: a request topic, a reply topic, a correlation header.

No consumer groups: both sides ``assign()`` every partition of their topics and start at
the end, so nothing waits for a group join. The server reads batches with ``getmany()``,
answers each request with ``producer.send()`` without awaiting the delivery (the producer
batches them), and counts events. The client sends requests the same way (the reply is
what it waits for) and awaits the broker's acknowledgement of each event, as polybus does.

Tansu answers a fetch only when ``fetch_max_wait_ms`` expires (new data does not wake a
waiting fetch), so latency is about half of it; every implementation gets the same value.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from .common import Config

dumps = orjson.dumps
loads = orjson.loads
PARTITIONS = 3
"""Partitions of each pre-created topic (polybus's ``num_partitions`` default)."""


def topics(cfg: Config) -> list[str]:
    return [cfg.rpc, f"{cfg.rpc}.reply", cfg.event]


async def prepare(cfg: Config) -> None:
    """Create the run's topics up front, for every implementation."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
    await admin.start()
    try:
        new = [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in topics(cfg)]
        with contextlib.suppress(Exception):  # already there
            await admin.create_topics(new)
    finally:
        await admin.close()


async def cleanup(cfg: Config) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(topics(cfg))
    finally:
        await admin.close()


async def start_producer(cfg: Config) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, acks=1, linger_ms=0)
    await producer.start()
    return producer


async def start_consumer(cfg: Config, names: Iterable[str]) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=cfg.kafka_fetch_max_wait_ms,
    )
    await consumer.start()
    partitions = [TopicPartition(t, p) for t in names for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:  # resolve the positions now: later messages are all seen
        await consumer.position(tp)
    return consumer


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    producer = await start_producer(cfg)
    consumer = await start_consumer(cfg, [cfg.rpc, cfg.event])
    event = cfg.event

    async def loop() -> None:
        send = producer.send
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                if tp.topic == event:
                    for _ in records:
                        on_event()
                    continue
                for record in records:
                    headers = dict(record.headers)
                    msg = loads(record.value)
                    await send(
                        headers["reply"].decode(),
                        dumps({"response": sum(msg["a"])}),
                        headers=[("id", headers["id"])],
                    )

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await consumer.stop()
        await producer.stop()


class Client:
    def __init__(self, cfg: Config, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._rpc = cfg.rpc
        self._event = cfg.event
        self._reply = f"{cfg.rpc}.reply"
        self._reply_header = ("reply", self._reply.encode())
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._next = 0
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, cfg: Config) -> None:
        consumer = self._consumer = await start_consumer(cfg, [self._reply])
        pending = self._pending

        async def replies() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        fut = pending.pop(record.headers[0][1], None)
                        if fut is not None and not fut.done():
                            fut.set_result(loads(record.value)["response"])

        self._task = self._loop.create_task(replies())

    async def call(self, data: Any) -> Any:
        self._next += 1
        rid = b"%x" % self._next
        fut = self._pending[rid] = self._loop.create_future()
        await self._producer.send(self._rpc, dumps(data), headers=[("id", rid), self._reply_header])
        return await fut

    async def emit(self, data: Any) -> None:
        await (await self._producer.send(self._event, dumps(data)))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
        await self._producer.stop()


async def connect(cfg: Config) -> Client:
    client = Client(cfg, await start_producer(cfg))
    await client.start(cfg)
    return client
