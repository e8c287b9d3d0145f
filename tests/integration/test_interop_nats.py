"""NATS interop with real NestJS 12 (@nestjs/microservices over @nats-io/transport-node).

Both directions with the four handlers (sum with an object pattern, a stream, an
``RpcException``, an event), plus what is NATS-specific: a NestJS server answers the
reply subject a polybus client chose (``_INBOX.<nuid>.<request id>`` on one wildcard
inbox subscription), an unknown pattern gives no-responders, and a polybus server
answers the per-request inboxes of a NestJS client.
"""

from __future__ import annotations

import asyncio

import harness  # tests/integration/nest/harness.py
import pytest
from twin import build_twin  # tests/integration/nest/twin.py

pytest.importorskip("nats")

pytestmark = [pytest.mark.interop, pytest.mark.broker("nats")]


async def test_nestjs_client_calls_polybus_server_in_a_queue_group(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Two polybus instances in one queue group: the NestJS client gets one answer each."""
    first = build_twin(url, prefix, queue=f"{prefix}workers")
    second = build_twin(url, prefix, queue=f"{prefix}workers")
    async with first, second:
        result = await harness.run_nest_client(
            "NATS", {"NEST_URL": url, "NEST_PREFIX": prefix}, timeout=90
        )
        await harness.wait_until(lambda: bool(first.events or second.events))
        await asyncio.sleep(0.2)
    received = first.events + second.events
    assert result["sum"] == 10 and result["stream"] == [1, 2, 3]
    assert received == [harness.ORDER]  # delivered to one member of the group only
