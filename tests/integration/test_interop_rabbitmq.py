"""RabbitMQ interop with real NestJS 12 (@nestjs/microservices RMQ transport), both ways.

Beyond the four handlers (sum with an object pattern, a stream, an RpcException, an event)
this checks what is RabbitMQ-specific: both sides declare the same durable queue without
conflict (a NestJS and a polybus server can even share it), replies are matched by
``correlation_id`` (NestJS's replies carry no ``id``), NestJS's no-handler reply, and a
polybus server in manual-ack mode (``no_ack=false``) serving a NestJS client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import harness  # tests/integration/nest/harness.py
import pytest

from polybus import Microservice, RpcException, create_client
from polybus.testing.brokers import broker_url

aio_pika = pytest.importorskip("aio_pika")

pytestmark = [pytest.mark.interop, pytest.mark.broker("rabbitmq")]


@pytest.fixture
def amqp() -> str:
    return broker_url("rabbitmq").split("?", 1)[0]


@pytest.fixture
async def prefix(amqp: str) -> AsyncIterator[str]:
    """A unique NEST_PREFIX; the service queue ``<prefix>queue`` is deleted afterwards."""
    value = harness.unique_prefix()
    yield value
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{value}queue")
    finally:
        await connection.close()


def nest_env(amqp: str, prefix: str) -> dict[str, str]:
    return {"NEST_URL": amqp.rstrip("/"), "NEST_QUEUE": f"{prefix}queue", "NEST_PREFIX": prefix}


def polybus_url(amqp: str, prefix: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{amqp.rstrip('/')}/?queue={prefix}queue{extra}"


def build_service(
    url: str, prefix: str, received: list[Any], instance: str = "polybus"
) -> Microservice:
    app = Microservice(url)

    @app.message_pattern({"cmd": f"{prefix}sum"})
    def total(numbers: list[float]) -> float:
        return sum(numbers)

    @app.message_pattern(f"{prefix}stream")
    async def stream(_: Any) -> AsyncIterator[int]:
        for i in (1, 2, 3):
            await asyncio.sleep(0.005)
            yield i

    @app.message_pattern(f"{prefix}fail")
    def fail(_: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.event_pattern(f"{prefix}order_placed")
    def placed(data: Any) -> None:
        received.append(data)

    @app.message_pattern(f"{prefix}who")
    def who(_: Any) -> str:
        return instance

    return app


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_nestjs_client_calls_polybus_server_in_manual_ack_mode(
    nest_ready: None, amqp: str, prefix: str
) -> None:
    received: list[Any] = []
    url = polybus_url(amqp, prefix, no_ack="false", prefetch_count="5")
    async with build_service(url, prefix, received):
        result = await harness.run_nest_client("RMQ", nest_env(amqp, prefix), timeout=90)
        await wait_until(lambda: bool(received))
    assert result["sum"] == 10 and result["stream"] == [1, 2, 3]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    assert received == [harness.ORDER]
    # everything was acked: nothing went back to the queue when the server closed
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}queue", passive=True)
        assert queue.declaration_result.message_count == 0
    finally:
        await connection.close()


async def test_nestjs_and_polybus_servers_share_one_queue(
    nest_ready: None, amqp: str, prefix: str
) -> None:
    received: list[Any] = []
    url = polybus_url(amqp, prefix)
    # NestJS declares the queue first, polybus asserts it with the same flags (no 406)
    nest_server = harness.start_nest_server("RMQ", nest_env(amqp, prefix))
    service = build_service(url, prefix, received)
    async with nest_server as nest, service, create_client(url) as client:
        sums = await asyncio.gather(
            *(client.send({"cmd": f"{prefix}sum"}, [1, 2, 3, 4]) for _ in range(60))
        )
        assert sums == [10] * 60
        for _ in range(20):
            await client.emit(f"{prefix}order_placed", harness.ORDER)
        await wait_until(lambda: len(received) + len(nest.events) >= 20, timeout=30)
    assert received and nest.events  # both consumers took a share of the queue
    assert len(received) + len(nest.events) == 20
