"""NATS interop with real NestJS 12 (@nestjs/microservices over @nats-io/transport-node).

Both directions with the four handlers (sum with an object pattern, a stream, an
``RpcException``, an event), plus what is NATS-specific: a NestJS server answers the
reply subject a polybus client chose (``_INBOX.<nuid>.<request id>`` on one wildcard
inbox subscription), an unknown pattern gives no-responders, and a polybus server
answers the per-request inboxes of a NestJS client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import harness  # tests/integration/nest/harness.py
import pytest

from polybus import Microservice, RpcException

pytest.importorskip("nats")

pytestmark = [pytest.mark.interop, pytest.mark.broker("nats")]


def build_service(url: str, prefix: str, received: list[Any], **options: Any) -> Microservice:
    app = Microservice(url, **options)

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

    return app


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_nestjs_client_calls_polybus_server_in_a_queue_group(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Two polybus instances in one queue group: the NestJS client gets one answer each."""
    received: list[Any] = []
    first = build_service(url, prefix, received, queue=f"{prefix}workers")
    second = build_service(url, prefix, received, queue=f"{prefix}workers")
    async with first, second:
        result = await harness.run_nest_client(
            "NATS", {"NEST_URL": url, "NEST_PREFIX": prefix}, timeout=90
        )
        await wait_until(lambda: bool(received))
        await asyncio.sleep(0.2)
    assert result["sum"] == 10 and result["stream"] == [1, 2, 3]
    assert received == [harness.ORDER]  # delivered to one member of the group only
