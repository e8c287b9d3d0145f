"""Kafka interop with real NestJS 12 (@nestjs/microservices KAFKA transport, kafkajs), both ways.

Kafka carries the data itself, so what crosses is NestJS's ``KafkaParser`` view of it: a
number a NestJS handler returns arrives as the text ``"10"``. Beyond the four handlers (sum,
a stream, an ``RpcException``, an event) this checks what is Kafka-specific: a NestJS stream
whose completion travels alone gives no trailing ``None`` item, a polybus server merges
completion into the last item so a NestJS client sees no trailing ``null`` either,
message-shaped data (``{"key", "value", "headers"}``) is sent as a Kafka message, and a NestJS
client (consumer group on the reply topic) and a polybus client (explicit partition
assignment) share reply topics at once, each getting exactly its own replies.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import harness  # tests/integration/nest/harness.py
import pytest
from twin import TICK, build_twin, patterns  # tests/integration/nest/twin.py

from polybus import (
    Record,
    RpcError,
    create_client,
)

pytest.importorskip("aiokafka")

pytestmark = [pytest.mark.interop, pytest.mark.broker("kafka")]


@pytest.fixture
def prefix() -> str:
    return harness.unique_prefix().rstrip("_")


def nest_env(url: str, prefix: str) -> dict[str, str]:
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    return {"NEST_BROKERS": netloc, "NEST_PREFIX": prefix}


async def test_polybus_client_calls_nestjs_server(nest_ready: None, url: str, prefix: str) -> None:
    p = patterns(prefix, kafka=True)
    async with (
        harness.start_nest_server("KAFKA", nest_env(url, prefix)) as nest,
        create_client(url, timeout=30) as client,
    ):
        # NestJS says READY once kafkajs's consumer runs, which can be before its group has
        # partitions: a request produced before then is never read (kafkajs starts at the
        # log's end). Ask until the service answers; NestJS returns the number 10, and
        # KafkaParser on our side reads the text "10".
        assert (
            await harness.first_answer(lambda: client.send(p["sum"], [1, 2, 3, 4], timeout=5))
            == "10"
        )
        # server.mjs completes on a later tick: the completion travels alone with a null
        # value, which NestJS's own client turns into a trailing null; polybus does not.
        assert [item async for item in client.send(p["stream"], {})] == ["1", "2", "3"]
        assert await client.send(p["stream"], {}) == "3"
        with pytest.raises(RpcError) as info:
            await client.send(p["fail"], {})
        assert info.value.error == {"code": "E_TEST", "message": "boom"}
        # Message-shaped data is a Kafka message: NestJS's handler sees only its value.
        message = {"key": "order-1", "value": [5, 5], "headers": {"x-origin": "polybus"}}
        assert await client.send(p["sum"], message) == "10"
        assert await client.send(p["sum"], Record([2, 3], key="k", headers={"x": "y"})) == "5"
        await client.emit(p["order_placed"], harness.ORDER)
        events = await nest.wait_for_events(1, timeout=30)
    assert events[0] == {"event": p["order_placed"], "data": harness.ORDER}


async def test_nestjs_client_calls_polybus_server(nest_ready: None, url: str, prefix: str) -> None:
    twin = build_twin(url, prefix, kafka=True, group_id=f"pb-{prefix}-group")
    async with twin:
        result = await harness.run_nest_client("KAFKA", nest_env(url, prefix), timeout=90)
        await twin.wait_for_events(1, timeout=15)
        await twin.app.transport.delete_resources()  # type: ignore[attr-defined]
    # NestJS's client parses "10" as text. Items leave as they are yielded and the
    # completion travels alone, as a NestJS server sends a stream whose items come on later
    # ticks: its null value reaches a NestJS caller as one more item (docs/PROTOCOL.md §7.6),
    # exactly as from a NestJS server.
    assert result == {
        "sum": "10",
        "stream": ["1", "2", "3", None],
        "fail": {"code": "E_TEST", "message": "boom"},
        "emitted": True,
    }
    assert twin.events == [harness.ORDER]
    ctx = twin.contexts[0]
    assert ctx.topic == patterns(prefix, kafka=True)["sum"]
    assert ctx.headers["kafka_replyTopic"] == patterns(prefix, kafka=True)["sum"] + ".reply"
    assert "kafka_correlationId" in ctx.headers and "x-polybus-type" not in ctx.headers


async def test_nestjs_caller_gets_null_and_each_stream_item_as_it_is_yielded(
    nest_ready: None, url: str, prefix: str
) -> None:
    """test_interop.py's parity check on Kafka: a handler returning None gives a NestJS
    caller's firstValueFrom() null, and each item of a slow stream reaches it within half
    the interval of being yielded (as text, then the completion's null, §7.6)."""
    twin = build_twin(url, prefix, kafka=True, parity=True, group_id=f"pb-{prefix}-group")
    async with twin:
        # tansu can hold a waiting fetch until its wait is over rather than answer when a
        # record comes: the NestJS consumer's wait (100 ms here by default) bounds how late
        # it may see one.
        env = {**nest_env(url, prefix), "NEST_PARITY": "1", "NEST_KAFKA_MAX_WAIT_MS": "10"}
        result = await harness.run_nest_client("KAFKA", env, timeout=120)
        await twin.app.transport.delete_resources()  # type: ignore[attr-defined]
    assert result["none"] is None
    assert [t["item"] for t in result["ticks"]] == ["0", "1", "2", None]
    items = result["ticks"][:3]
    late = [t["at"] / 1000 - at for t, at in zip(items, twin.yielded, strict=True)]
    assert max(late) < TICK / 2, f"items arrived {late} s after they were yielded"


async def test_polybus_caller_gets_none_and_each_stream_item_as_it_is_emitted(
    nest_ready: None, url: str, prefix: str
) -> None:
    """The other direction on Kafka: a NestJS handler returning null gives ``send()`` None,
    and each item of a NestJS Observable reaches a polybus iterator within half the interval
    of its emission (its completion, travelling alone, adds no item)."""
    p = patterns(prefix, kafka=True)
    env = {**nest_env(url, prefix), "NEST_PARITY": "1"}
    async with (
        harness.start_nest_server("KAFKA", env) as nest,
        create_client(url, timeout=30, fetch_max_wait_ms=10) as client,  # as the other way
    ):
        assert await harness.first_answer(lambda: client.send(p["none"], {}, timeout=5)) is None
        arrived: list[tuple[Any, float]] = []
        async for item in client.send(p["ticks"], {}):
            arrived.append((item, time.time()))
        emitted = await nest.wait_for_events(3)
    assert [item for item, _ in arrived] == ["0", "1", "2"]
    at = {str(e["data"]["item"]): e["data"]["at"] / 1000 for e in emitted}
    late = [when - at[item] for item, when in arrived]
    assert max(late) < TICK / 2, f"items arrived {late} s after they were emitted"


async def test_nestjs_and_polybus_clients_share_reply_topics(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Both clients at once on one NestJS server: each gets exactly its own replies."""
    p = patterns(prefix, kafka=True)
    async with (
        harness.start_nest_server("KAFKA", nest_env(url, prefix)),
        create_client(url, timeout=60) as client,
    ):
        assert await client.send(p["sum"], [0]) == "0"  # reply partition assigned
        nest_run = asyncio.ensure_future(
            harness.run_nest_client("KAFKA", nest_env(url, prefix), timeout=90)
        )
        replies: list[Any] = []
        while not nest_run.done():
            batch = await asyncio.gather(*(client.send(p["sum"], [i, 1]) for i in range(20)))
            replies.append(batch == [str(i + 1) for i in range(20)])
            await asyncio.sleep(0.05)
        result = await nest_run
        assert replies and all(replies)
        assert client.pending_count == 0
    assert result["sum"] == "10"
    assert result["stream"] == ["1", "2", "3", None]  # NestJS's own trailing null


async def test_nestjs_and_polybus_servers_share_one_consumer_group(
    nest_ready: None, url: str, prefix: str
) -> None:
    """kafkajs joins with the protocol 'RoundRobinAssigner': a polybus server offering it
    joins the same group, and the group's partitions are split between the two kinds. When
    the NestJS member leaves, requests keep being answered: its partitions move to polybus,
    which reads what NestJS had not answered."""
    p = patterns(prefix, kafka=True)
    group = f"shared-{prefix}"
    twin = build_twin(url, prefix, kafka=True, group_id=group)
    received = twin.events
    env = {**nest_env(url, prefix), "NEST_KAFKA_GROUP_ID": group}
    n = 40
    async with (
        harness.start_nest_server("KAFKA", env) as nest,
        twin,
        create_client(url, timeout=60) as client,
    ):
        for i in range(n):
            await client.emit(p["order_placed"], Record({"i": i}, key=f"key-{i}"))
        await harness.wait_until(lambda: len(received) + len(nest.events) >= n, timeout=30)
        await asyncio.sleep(0.5)  # a duplicate would show up meanwhile

        async def batch(first: int) -> bool:
            replies = await asyncio.gather(
                *(client.send(p["sum"], Record([first + i, 1], key=f"k{i}")) for i in range(10))
            )
            return [str(r) for r in replies] == [str(first + i + 1) for i in range(10)]

        assert await batch(0)
        stopping = asyncio.ensure_future(nest.stop())
        answered = [await batch(100)]
        while not stopping.done():
            answered.append(await batch(100 * len(answered) + 100))
        await stopping
        answered += [await batch(100 * len(answered) + 100 * k + 100) for k in range(3)]
        await twin.app.transport.delete_resources()  # type: ignore[attr-defined]
    by_nest = [e["data"]["i"] for e in nest.events]
    by_polybus = [d["i"] for d in received]
    assert by_nest and by_polybus, (by_nest, by_polybus)  # both kinds got partitions
    assert sorted(by_nest + by_polybus) == list(range(n))  # each event once
    assert all(answered), answered  # no request lost or answered wrongly while NestJS left
