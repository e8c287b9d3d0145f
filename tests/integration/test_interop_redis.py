"""Redis interop with real NestJS 12 (@nestjs/microservices REDIS transport), both ways.

Beyond the four handlers (sum with an object pattern, a stream, an RpcException, an event)
this checks what is Redis-specific: reply channels (``<route>.reply``) shared by a NestJS
and a polybus client at once, each keeping only its own ids; many concurrent calls to a
NestJS server over one reply subscription; and pub/sub broadcast, where a NestJS and a
polybus server on the same patterns both receive every message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import harness  # tests/integration/nest/harness.py
import pytest
from twin import build_twin, patterns  # tests/integration/nest/twin.py

from polybus import create_client

pytest.importorskip("redis")

pytestmark = [pytest.mark.interop, pytest.mark.broker("redis")]


def nest_env(url: str, prefix: str) -> dict[str, str]:
    return {"NEST_URL": url, "NEST_PREFIX": prefix}


# -- (1) a polybus client calls a NestJS server ---------------------------------------------


async def test_nestjs_and_polybus_clients_share_reply_channels(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Both clients subscribe to ``{"cmd":"<prefix>sum"}.reply`` and see each other's
    replies; each keeps only the ids it waits for."""
    p = patterns(prefix)
    async with build_twin(url, prefix), create_client(url, timeout=30) as client:

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
    async with (
        harness.start_nest_server("REDIS", nest_env(url, prefix)) as nest,
        build_twin(url, prefix) as service,
        create_client(url, timeout=30) as client,
    ):
        assert await client.send(p["sum"], [1, 2, 3, 4]) == 10
        await client.emit(p["order_placed"], harness.ORDER)
        events = await nest.wait_for_events(1, timeout=30)
        await service.wait_for_events(1)
    assert events[0]["data"] == harness.ORDER
    assert service.events == [harness.ORDER]
