"""polybus itself: a ``Microservice`` with one message handler and one event handler."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from polybus import ClientProxy, Microservice, create_client
from polybus.abc import SupportsCleanup

from .common import Config


def target(cfg: Config) -> tuple[str, dict[str, Any]]:
    """The URL and extra options of ``cfg.transport``, the same for server and client."""
    if cfg.transport == "tcp":
        return f"tcp://127.0.0.1:{cfg.tcp_port}", {}
    if cfg.transport == "redis":
        return cfg.redis_url, {}
    if cfg.transport == "nats":
        return cfg.nats_url, {}
    if cfg.transport == "rabbitmq":
        return cfg.amqp_url, {"queue": cfg.queue}
    if cfg.transport == "mqtt":
        return cfg.mqtt_url, {}
    if cfg.transport == "kafka":
        return f"kafka://{cfg.kafka_bootstrap}", {
            "group_id": cfg.prefix,
            "fetch_max_wait_ms": cfg.kafka_fetch_max_wait_ms,
            "session_timeout_ms": cfg.kafka_session_timeout_ms,
        }
    raise ValueError(cfg.transport)


@contextlib.asynccontextmanager
async def serve(
    cfg: Config, on_event: Callable[[], None], middleware: Sequence[Any] = ()
) -> AsyncIterator[Microservice]:
    url, options = target(cfg)
    app = Microservice(url, middleware=list(middleware), **options)

    @app.message_pattern(cfg.rpc)
    async def total(data: Any) -> int:
        return sum(data["a"])

    @app.event_pattern(cfg.event)
    async def counted(data: Any) -> None:
        on_event()

    try:
        async with app:
            yield app
    finally:
        transport = app.transport
        if isinstance(transport, SupportsCleanup):  # e.g. the RabbitMQ queue
            with contextlib.suppress(Exception):
                await transport.delete_resources()


class Client:
    def __init__(self, proxy: ClientProxy, cfg: Config) -> None:
        self.proxy = proxy
        self._rpc = cfg.rpc
        self._event = cfg.event

    async def call(self, data: Any) -> Any:
        return await self.proxy.send(self._rpc, data)

    async def emit(self, data: Any) -> None:
        await self.proxy.emit(self._event, data)

    async def close(self) -> None:
        await self.proxy.close()


async def connect(cfg: Config) -> Client:
    url, options = target(cfg)
    proxy = create_client(url, **options)
    await proxy.connect()
    return Client(proxy, cfg)
