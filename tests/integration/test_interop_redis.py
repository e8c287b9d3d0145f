"""Redis interop with real NestJS 12 (@nestjs/microservices REDIS transport), both ways.

Beyond the four handlers (sum with an object pattern, a stream, an RpcException, an event)
this checks what is Redis-specific: reply channels (``<route>.reply``) shared by a NestJS
and a polybus client at once, each keeping only its own ids; many concurrent calls to a
NestJS server over one reply subscription; and pub/sub broadcast, where a NestJS and a
polybus server on the same patterns both receive every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import harness  # tests/integration/nest/harness.py
import pytest

from polybus import Microservice, RpcException, create_client

pytest.importorskip("redis")

pytestmark = [pytest.mark.interop, pytest.mark.broker("redis")]


def patterns(prefix: str) -> dict[str, Any]:
    return {
        "sum": {"cmd": f"{prefix}sum"},
        "stream": f"{prefix}stream",
        "fail": f"{prefix}fail",
        "order_placed": f"{prefix}order_placed",
    }


def nest_env(url: str, prefix: str) -> dict[str, str]:
    return {"NEST_URL": url, "NEST_PREFIX": prefix}


def polybus_service(url: str, prefix: str, received: list[Any]) -> Microservice:
    """The four handlers of server.mjs, in Python."""
    p = patterns(prefix)
    app = Microservice(url)

    @app.message_pattern(p["sum"])
    def total(numbers: list[float]) -> float:
        return sum(numbers)

    @app.message_pattern(p["stream"])
    async def stream(_: Any) -> AsyncIterator[int]:
        for i in (1, 2, 3):
            await asyncio.sleep(0.005)
            yield i

    @app.message_pattern(p["fail"])
    def fail(_: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.event_pattern(p["order_placed"])
    def placed(data: Any) -> None:
        received.append(data)

    return app


async def wait_for(received: list[Any], n: int, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if len(received) >= n:
            return
        await asyncio.sleep(0.05)


# -- (1) a polybus client calls a NestJS server ---------------------------------------------


async def test_nestjs_and_polybus_clients_share_reply_channels(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Both clients subscribe to ``{"cmd":"<prefix>sum"}.reply`` and see each other's
    replies; each keeps only the ids it waits for."""
    p = patterns(prefix)
    received: list[Any] = []
    async with (
        polybus_service(url, prefix, received),
        create_client(url, timeout=30) as client,
    ):

        async def hammer() -> list[Any]:
            results = []
            for i in range(60):
                results.extend(
                    await asyncio.gather(*(client.send(p["sum"], [i, j]) for j in range(5)))
                )
            return results

        nest_result, ours = await asyncio.gather(
            harness.run_nest_client("REDIS", nest_env(url, prefix), timeout=90), hammer()
        )
        assert ours == [i + j for i in range(60) for j in range(5)]
        assert nest_result["sum"] == 10 and nest_result["stream"] == [1, 2, 3]
        assert client.pending_count == 0


async def test_nestjs_and_polybus_servers_both_receive(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Redis pub/sub is broadcast: a NestJS and a polybus server on the same patterns both
    get every request and event; the caller keeps the first reply."""
    p = patterns(prefix)
    received: list[Any] = []
    async with (
        harness.start_nest_server("REDIS", nest_env(url, prefix)) as nest,
        polybus_service(url, prefix, received),
        create_client(url, timeout=30) as client,
    ):
        assert await client.send(p["sum"], [1, 2, 3, 4]) == 10
        await client.emit(p["order_placed"], harness.ORDER)
        events = await nest.wait_for_events(1, timeout=30)
        await wait_for(received, 1)
    assert events[0]["data"] == harness.ORDER
    assert received == [harness.ORDER]
