"""NestJS interop, both directions, on TCP, Redis, NATS, RabbitMQ and MQTT: real
@nestjs/microservices 12 (Kafka, whose records carry the data itself, has its own module).

(1) a polybus client calls a NestJS microservice; (2) a NestJS ClientProxy calls a
polybus microservice. Each checks a sum with an object pattern, a streamed reply, an
``RpcException`` object and an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import harness  # tests/integration/nest/harness.py
import pytest

from polybus import Microservice, RpcError, RpcException, create_client
from polybus.testing.brokers import broker_url, require

pytestmark = pytest.mark.interop


@dataclass(frozen=True)
class Side:
    """How one transport is configured for both sides, from a prefix."""

    nest: str
    url: Callable[[str], str]
    env: Callable[[str, str], dict[str, str]]

    def patterns(self, prefix: str) -> dict[str, Any]:
        return {
            "sum": {"cmd": f"{prefix}sum"},
            "stream": f"{prefix}stream",
            "fail": f"{prefix}fail",
            "order_placed": f"{prefix}order_placed",
        }


def _tcp_url(prefix: str) -> str:
    return f"tcp://127.0.0.1:{harness.free_tcp_port()}"


def _tcp_env(url: str, prefix: str) -> dict[str, str]:
    return {"NEST_HOST": "127.0.0.1", "NEST_PORT": str(urlsplit(url).port)}


def _amqp_url(prefix: str) -> str:
    return broker_url("rabbitmq").rstrip("/") + f"/?queue={prefix}queue"


def _amqp_env(url: str, prefix: str) -> dict[str, str]:
    base = url.split("?", 1)[0].rstrip("/")
    return {"NEST_URL": base, "NEST_QUEUE": f"{prefix}queue"}


SIDES = {
    "tcp": Side("TCP", _tcp_url, _tcp_env),
    "redis": Side("REDIS", lambda p: broker_url("redis"), lambda u, p: {"NEST_URL": u}),
    "nats": Side("NATS", lambda p: broker_url("nats"), lambda u, p: {"NEST_URL": u}),
    "rabbitmq": Side("RMQ", _amqp_url, _amqp_env),
    "mqtt": Side("MQTT", lambda p: broker_url("mqtt"), lambda u, p: {"NEST_URL": u}),
}
# Kafka carries the data itself (numbers arrive as text, streams may end with a null):
# tests/integration/test_interop_kafka.py checks that wire view exactly.


@pytest.fixture(params=list(SIDES))
def side(request: pytest.FixtureRequest) -> Side:
    reason = harness.node_available()
    if reason:
        require(f"NestJS interop: {reason}")
    return SIDES[request.param]


async def test_polybus_client_calls_nestjs_server(side: Side) -> None:
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    patterns = side.patterns(prefix)
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix)}
    async with (
        harness.start_nest_server(side.nest, env) as nest,
        create_client(url, timeout=30) as client,
    ):
        assert await client.send(patterns["sum"], [1, 2, 3, 4]) == 10
        assert [item async for item in client.send(patterns["stream"], {})] == [1, 2, 3]
        with pytest.raises(RpcError) as info:
            await client.send(patterns["fail"], {})
        assert info.value.error == {"code": "E_TEST", "message": "boom"}
        await client.emit(patterns["order_placed"], {"orderId": "ord_42", "amount": 1999})
        events = await nest.wait_for_events(1, timeout=30)
    assert events[0]["data"] == {"orderId": "ord_42", "amount": 1999}


async def test_nestjs_client_calls_polybus_server(side: Side) -> None:
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    patterns = side.patterns(prefix)
    app = Microservice(url)
    received: list[Any] = []

    @app.message_pattern(patterns["sum"])
    def total(numbers: list[float]) -> float:
        return sum(numbers)

    @app.message_pattern(patterns["stream"])
    async def stream(_: Any) -> AsyncIterator[int]:
        for i in (1, 2, 3):
            await asyncio.sleep(0.005)
            yield i

    @app.message_pattern(patterns["fail"])
    def fail(_: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.event_pattern(patterns["order_placed"])
    def placed(data: Any) -> None:
        received.append(data)

    env = {"NEST_PREFIX": prefix, **side.env(url, prefix)}
    async with app:
        result = await harness.run_nest_client(side.nest, env, timeout=90)
        for _ in range(200):
            if received:
                break
            await asyncio.sleep(0.05)
    assert result["sum"] == 10
    assert result["stream"] == [1, 2, 3]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    assert result["emitted"] is True
    assert received == [{"orderId": "ord_42", "amount": 1999}]


TICK = 0.2
"""Seconds between the items of the slow stream: holding an item back until the next one
exists (as polybus once did) makes it arrive a whole TICK late."""


async def test_nestjs_caller_gets_null_and_each_stream_item_as_it_is_yielded(side: Side) -> None:
    """A handler returning None gives a NestJS caller's firstValueFrom() null (not
    EmptyError); each item of a slow stream reaches it within a fraction of the interval."""
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    patterns = side.patterns(prefix)
    app = Microservice(url)
    yielded: list[float] = []

    @app.message_pattern(patterns["sum"])
    def total(numbers: list[float]) -> float:
        return sum(numbers)

    @app.message_pattern(patterns["stream"])
    def stream(_: Any) -> Any:
        yield from (1, 2, 3)

    @app.message_pattern(patterns["fail"])
    def fail(_: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.event_pattern(patterns["order_placed"])
    def placed(data: Any) -> None:
        pass

    @app.message_pattern(f"{prefix}none")
    def nothing(_: Any) -> None:
        return None

    @app.message_pattern(f"{prefix}ticks")
    async def ticks(_: Any) -> AsyncIterator[int]:
        for i in range(3):
            await asyncio.sleep(TICK)
            yielded.append(time.time())
            yield i

    env = {"NEST_PREFIX": prefix, "NEST_PARITY": "1", **side.env(url, prefix)}
    async with app:
        result = await harness.run_nest_client(side.nest, env, timeout=90)
    assert result["none"] is None
    assert [t["item"] for t in result["ticks"]] == [0, 1, 2]
    late = [t["at"] / 1000 - at for t, at in zip(result["ticks"], yielded, strict=True)]
    assert max(late) < TICK / 2, f"items arrived {late} s after they were yielded"
