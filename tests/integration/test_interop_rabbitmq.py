"""RabbitMQ interop with real NestJS 12 (@nestjs/microservices RMQ transport), both ways.

Beyond the four handlers (sum with an object pattern, a stream, an RpcException, an event)
this checks what is RabbitMQ-specific: both sides declare the same durable queue without
conflict (a NestJS and a polybus server can even share it), replies are matched by
``correlation_id`` (NestJS's replies carry no ``id``), NestJS's no-handler reply, and a
polybus server in manual-ack mode (``no_ack=false``) serving a NestJS client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import harness  # tests/integration/nest/harness.py
import pytest
from twin import build_twin, patterns  # tests/integration/nest/twin.py

from polybus import RpcError, create_client
from polybus.testing.brokers import broker_url

aio_pika = pytest.importorskip("aio_pika")

pytestmark = [pytest.mark.interop, pytest.mark.broker("rabbitmq")]


@pytest.fixture
def amqp() -> str:
    return broker_url("rabbitmq").split("?", 1)[0]


@pytest.fixture
async def prefix(amqp: str) -> AsyncIterator[str]:
    """A unique NEST_PREFIX; the service queue ``<prefix>queue`` and the exchanges the tests
    may declare (``<prefix>queue``, ``<prefix>fan``) are deleted afterwards."""
    value = harness.unique_prefix()
    yield value
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{value}queue")
        await channel.exchange_delete(f"{value}queue")
        await channel.exchange_delete(f"{value}fan")
    finally:
        await connection.close()


def nest_env(amqp: str, prefix: str) -> dict[str, str]:
    return {"NEST_URL": amqp.rstrip("/"), "NEST_QUEUE": f"{prefix}queue", "NEST_PREFIX": prefix}


def polybus_url(amqp: str, prefix: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{amqp.rstrip('/')}/?queue={prefix}queue{extra}"


async def test_nestjs_client_calls_polybus_server_in_manual_ack_mode(
    nest_ready: None, amqp: str, prefix: str
) -> None:
    url = polybus_url(amqp, prefix, no_ack="false", prefetch_count="5")
    async with build_twin(url, prefix) as service:
        result = await harness.run_nest_client("RMQ", nest_env(amqp, prefix), timeout=90)
        await service.wait_for_events(1)
    assert result["sum"] == 10 and result["stream"] == [1, 2, 3]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    assert service.events == [harness.ORDER]
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
    url = polybus_url(amqp, prefix)
    # NestJS declares the queue first, polybus asserts it with the same flags (no 406)
    nest_server = harness.start_nest_server("RMQ", nest_env(amqp, prefix))
    async with (
        nest_server as nest,
        build_twin(url, prefix) as service,
        create_client(url) as client,
    ):
        received = service.events
        sums = await asyncio.gather(
            *(client.send({"cmd": f"{prefix}sum"}, [1, 2, 3, 4]) for _ in range(60))
        )
        assert sums == [10] * 60
        for _ in range(20):
            await client.emit(f"{prefix}order_placed", harness.ORDER)
        await harness.wait_until(lambda: len(received) + len(nest.events) >= 20, timeout=30)
    assert received and nest.events  # both consumers took a share of the queue
    assert len(received) + len(nest.events) == 20


# -- exchanges: NestJS wildcards (a topic exchange named as the queue) and fanout -----------


def exchange_mode(
    amqp: str, prefix: str, mode: str, wildcard: tuple[str, str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """``(NestJS env, polybus options)`` of one exchange mode, the same on both sides:
    ``wildcards`` routes ``*``/``#`` patterns over a topic exchange named as the queue (and
    sets ``wildcard``, a NEST_* variable and its value, in the env); ``fanout`` publishes to
    a named fanout exchange declared with arguments (a side that declared other arguments
    would get a 406)."""
    env = nest_env(amqp, prefix)
    if mode == "wildcards":
        env.update([wildcard], NEST_OPTIONS=json.dumps({"wildcards": True}))
        return env, {"wildcards": True}
    arguments = {"alternate-exchange": f"{prefix}unrouted"}
    nest = {"exchange": f"{prefix}fan", "exchangeType": "fanout", "exchangeArguments": arguments}
    env["NEST_OPTIONS"] = json.dumps(nest)
    return env, {
        "exchange": f"{prefix}fan",
        "exchange_type": "fanout",
        "exchange_arguments": arguments,
    }


@pytest.mark.parametrize("mode", ["wildcards", "fanout"])
async def test_nestjs_client_calls_polybus_server_over_an_exchange(
    nest_ready: None, amqp: str, prefix: str, mode: str
) -> None:
    env, options = exchange_mode(amqp, prefix, mode, ("NEST_WILDCARD_SEND", f"{prefix}wild.abc"))
    wildcard = f"{prefix}wild.*" if mode == "wildcards" else None
    async with build_twin(polybus_url(amqp, prefix), prefix, wildcard=wildcard, **options) as twin:
        result = await harness.run_nest_client("RMQ", env, timeout=90)
        await twin.wait_for_events(1)
    assert result["sum"] == 10 and result["stream"] == [1, 2, 3]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    assert twin.events == [harness.ORDER]
    if mode == "wildcards":
        assert result["wild"] == {"wild": "w"}


@pytest.mark.parametrize("mode", ["wildcards", "fanout"])
async def test_polybus_client_calls_nestjs_server_over_an_exchange(
    nest_ready: None, amqp: str, prefix: str, mode: str
) -> None:
    env, options = exchange_mode(amqp, prefix, mode, ("NEST_WILDCARD", f"{prefix}wild.*"))
    p = patterns(prefix)
    async with (
        harness.start_nest_server("RMQ", env) as nest,
        create_client(polybus_url(amqp, prefix), timeout=30, **options) as client,
    ):
        assert await client.send(p["sum"], [1, 2, 3, 4]) == 10
        assert [item async for item in client.send(p["stream"], {})] == [1, 2, 3]
        with pytest.raises(RpcError) as info:
            await client.send(p["fail"], {})
        assert info.value.error == {"code": "E_TEST", "message": "boom"}
        if mode == "wildcards":
            assert await client.send(f"{prefix}wild.abc", "w") == {"wild": "w"}
        await client.emit(p["order_placed"], harness.ORDER)
        events = await nest.wait_for_events(1, timeout=30)
    assert events[0]["data"] == harness.ORDER
