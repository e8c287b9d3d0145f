"""NestJS interop, both directions, on TCP, Redis, NATS, RabbitMQ and MQTT: real
@nestjs/microservices 12 (Kafka, whose records carry the data itself, has its own module).

(1) a polybus client calls a NestJS microservice; (2) a NestJS ClientProxy calls a
polybus microservice. Each checks a sum with an object pattern, a streamed reply, an
``RpcException`` object and an event.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import harness  # tests/integration/nest/harness.py
import pytest
from twin import TICK, build_twin, patterns  # tests/integration/nest/twin.py

from polybus import RpcError, create_client
from polybus.testing.brokers import broker_url, require

pytestmark = pytest.mark.interop


@dataclass(frozen=True)
class Side:
    """How one transport is configured for both sides, from a prefix."""

    nest: str
    url: Callable[[str], str]
    env: Callable[[str, str], dict[str, str]]


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
    p = patterns(prefix)
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix)}
    async with (
        harness.start_nest_server(side.nest, env) as nest,
        create_client(url, timeout=30) as client,
    ):
        assert await client.send(p["sum"], [1, 2, 3, 4]) == 10
        assert [item async for item in client.send(p["stream"], {})] == [1, 2, 3]
        with pytest.raises(RpcError) as info:
            await client.send(p["fail"], {})
        assert info.value.error == {"code": "E_TEST", "message": "boom"}
        await client.emit(p["order_placed"], {"orderId": "ord_42", "amount": 1999})
        events = await nest.wait_for_events(1, timeout=30)
    assert events[0]["data"] == {"orderId": "ord_42", "amount": 1999}


async def test_nestjs_client_calls_polybus_server(side: Side) -> None:
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix)}
    async with build_twin(url, prefix) as service:
        result = await harness.run_nest_client(side.nest, env, timeout=90)
        await service.wait_for_events(1)
    assert result["sum"] == 10
    assert result["stream"] == [1, 2, 3]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    assert result["emitted"] is True
    assert service.events == [harness.ORDER]


async def test_nestjs_caller_gets_null_and_each_stream_item_as_it_is_yielded(side: Side) -> None:
    """A handler returning None gives a NestJS caller's firstValueFrom() null (not
    EmptyError); each item of a slow stream reaches it within half the interval (holding
    an item back until the next one exists, as polybus once did, makes it a whole TICK
    late)."""
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    env = {"NEST_PREFIX": prefix, "NEST_PARITY": "1", **side.env(url, prefix)}
    async with build_twin(url, prefix) as service:
        result = await harness.run_nest_client(side.nest, env, timeout=90)
    assert result["none"] is None
    assert [t["item"] for t in result["ticks"]] == [0, 1, 2]
    late = [t["at"] / 1000 - at for t, at in zip(result["ticks"], service.yielded, strict=True)]
    assert max(late) < TICK / 2, f"items arrived {late} s after they were yielded"


async def test_polybus_caller_gets_none_and_each_stream_item_as_it_is_emitted(
    side: Side,
) -> None:
    """The other direction: a NestJS handler returning null gives ``send()`` None, and each
    item of a NestJS Observable emitting every TICK reaches a polybus iterator within half
    the interval of its emission (server.mjs reports when it emitted each one), so the
    gaps between arrivals stay near the interval."""
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    p = patterns(prefix)
    env = {"NEST_PREFIX": prefix, "NEST_PARITY": "1", **side.env(url, prefix)}
    async with (
        harness.start_nest_server(side.nest, env) as nest,
        create_client(url, timeout=30) as client,
    ):
        assert await client.send(p["none"], {}) is None
        arrived: list[tuple[Any, float]] = []
        async for item in client.send(p["ticks"], {}):
            arrived.append((item, time.time()))
        emitted = await nest.wait_for_events(3)
    assert [item for item, _ in arrived] == [0, 1, 2]
    at = {e["data"]["item"]: e["data"]["at"] / 1000 for e in emitted}
    late = [when - at[item] for item, when in arrived]
    assert max(late) < TICK / 2, f"items arrived {late} s after they were emitted"
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(arrived)]
    assert all(TICK / 2 < gap < TICK * 1.5 for gap in gaps), f"gaps between items: {gaps}"


WILDCARDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # side: (a handler pattern with wildcards, a pattern it matches, the option turning
    # wildcards on, the same name on both sides); RabbitMQ's: test_interop_rabbitmq.py
    "nats": ("wild.*", "wild.abc", {}),
    "redis": ("wild*", "wild.abc", {"wildcards": True}),
    "mqtt": ("wild/+", "wild/abc", {}),
}


@pytest.fixture(params=list(WILDCARDS))
def wild_side(request: pytest.FixtureRequest) -> str:
    reason = harness.node_available()
    if reason:
        require(f"NestJS interop: {reason}")
    name: str = request.param
    return name


async def test_nestjs_client_reaches_a_polybus_wildcard_handler(wild_side: str) -> None:
    """A request to a pattern only a wildcard handler matches gets that handler's reply."""
    side = SIDES[wild_side]
    handler, concrete, options = WILDCARDS[wild_side]
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    env = {"NEST_PREFIX": prefix, "NEST_WILDCARD_SEND": prefix + concrete, **side.env(url, prefix)}
    async with build_twin(url, prefix, wildcard=prefix + handler, **options):
        result = await harness.run_nest_client(side.nest, env, timeout=90)
    assert result["wild"] == {"wild": "w"}
    assert result["sum"] == 10  # exact routes still work with wildcards on


async def test_polybus_client_reaches_a_nestjs_wildcard_handler(wild_side: str) -> None:
    side = SIDES[wild_side]
    handler, concrete, options = WILDCARDS[wild_side]
    prefix = harness.unique_prefix()
    url = side.url(prefix)
    env = {
        "NEST_PREFIX": prefix,
        "NEST_WILDCARD": prefix + handler,
        "NEST_OPTIONS": json.dumps(options),
        **side.env(url, prefix),
    }
    async with (
        harness.start_nest_server(side.nest, env),
        create_client(url, timeout=30) as client,
    ):
        assert await client.send(prefix + concrete, "w") == {"wild": "w"}
        assert await client.send(patterns(prefix)["sum"], [1, 2, 3, 4]) == 10
