"""FastStream 0.7.8 (``pip install polybus[bench]``) with its defaults: a subscriber per
channel/subject/queue/topic, ``broker.request()`` for RPC (Redis, NATS, RabbitMQ: Kafka has
no request-reply in FastStream) and ``broker.publish()`` for events. FastStream speaks its
own message format, not NestJS's; the work per message is the same."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from .common import Config


def broker_for(cfg: Config) -> Any:
    """The broker, with FastStream's per-message logging off (``logger=None``)."""
    logger: Any = None
    if cfg.transport == "redis":
        from faststream.redis import RedisBroker

        # request() holds a pooled connection (its own PubSub) per call in flight
        return RedisBroker(cfg.redis_url, logger=logger, max_connections=256)
    if cfg.transport == "nats":
        from faststream.nats import NatsBroker

        return NatsBroker(cfg.nats_url, logger=logger)
    if cfg.transport == "rabbitmq":
        from faststream.rabbit import RabbitBroker

        return RabbitBroker(cfg.amqp_url, logger=logger)
    if cfg.transport == "kafka":
        from faststream.kafka import KafkaBroker

        return KafkaBroker(cfg.kafka_bootstrap, logger=logger)
    raise ValueError(f"FastStream has no {cfg.transport} transport")


def destinations(cfg: Config) -> tuple[Any, Any]:
    """Where requests and events go: channels/subjects/topics; queues on RabbitMQ."""
    if cfg.transport == "rabbitmq":
        from faststream.rabbit import RabbitQueue

        return RabbitQueue(cfg.queue, durable=True), RabbitQueue(f"{cfg.queue}.ev", durable=True)
    return cfg.rpc, cfg.event


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    broker = broker_for(cfg)
    rpc, event = destinations(cfg)
    options: dict[str, Any] = {}
    if cfg.transport == "kafka":
        options = {
            "group_id": cfg.prefix,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": cfg.kafka_fetch_max_wait_ms,
            "session_timeout_ms": cfg.kafka_session_timeout_ms,
            "heartbeat_interval_ms": 1000,
        }
    else:

        async def total(data: dict[str, Any]) -> int:
            return sum(data["a"])

        broker.subscriber(rpc)(total)

    async def counted(data: dict[str, Any]) -> None:
        on_event()

    broker.subscriber(event, **options)(counted)

    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


class Client:
    def __init__(self, broker: Any, cfg: Config) -> None:
        self._broker = broker
        self._rpc, self._event = destinations(cfg)
        self._kafka = cfg.transport == "kafka"

    async def call(self, data: Any) -> Any:
        if self._kafka:
            raise NotImplementedError("FastStream has no request-reply on Kafka")
        response = await self._broker.request(data, self._rpc, timeout=30)
        return await response.decode()

    async def emit(self, data: Any) -> None:
        await self._broker.publish(data, self._event)

    async def close(self) -> None:
        await self._broker.stop()


async def connect(cfg: Config) -> Client:
    broker = broker_for(cfg)
    await broker.connect()
    return Client(broker, cfg)
