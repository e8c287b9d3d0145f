"""MQTT interop with real NestJS 12 (@nestjs/microservices MQTT transport on mqtt.js 5).

The four handlers both ways run in tests/integration/test_interop.py; this checks what is
MQTT-specific: a polybus client keeps 100 requests in flight against a NestJS server (its
reply subscription lives as long as the client, so nothing races the publishes), an MQTT 5
polybus client talks to a NestJS server on MQTT 3.1.1, and polybus servers sharing a
``$share`` group answer a NestJS client once per message.
"""

from __future__ import annotations

import asyncio

import harness  # tests/integration/nest/harness.py
import pytest
from twin import build_twin  # tests/integration/nest/twin.py

from polybus import create_client
from polybus.transports.mqtt import MqttRecord

pytest.importorskip("aiomqtt")

pytestmark = [pytest.mark.interop, pytest.mark.broker("mqtt")]


def nest_env(url: str, prefix: str) -> dict[str, str]:
    return {"NEST_URL": url, "NEST_PREFIX": prefix}


async def test_100_requests_in_flight_to_a_nestjs_server(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Ten waves of 100 concurrent calls (QoS 0 and QoS 1), every one answered."""
    sum_pattern = {"cmd": f"{prefix}sum"}
    async with (
        harness.start_nest_server("MQTT", nest_env(url, prefix)),
        create_client(url, timeout=30) as client,
    ):
        for wave in range(10):
            qos = wave % 2
            replies = await asyncio.gather(
                *(client.send(sum_pattern, MqttRecord([wave, i], qos=qos)) for i in range(100))
            )
            assert replies == [wave + i for i in range(100)]
        assert client.pending_count == 0


async def test_mqtt5_client_calls_a_nestjs_server_on_mqtt_311(
    nest_ready: None, url: str, prefix: str
) -> None:
    async with (
        harness.start_nest_server("MQTT", nest_env(url, prefix)) as nest,
        create_client(f"{url}?protocol_version=5", timeout=30) as client,
    ):
        reply = await client.send({"cmd": f"{prefix}sum"}, [1, 2, 3, 4], headers={"x-a": "1"})
        assert reply == 10
        assert [item async for item in client.send(f"{prefix}stream", {})] == [1, 2, 3]
        await client.emit(f"{prefix}order_placed", harness.ORDER)
        events = await nest.wait_for_events(1, timeout=30)
    assert events[0]["data"] == harness.ORDER


async def test_nestjs_client_calls_polybus_servers_in_a_shared_subscription(
    nest_ready: None, url: str, prefix: str
) -> None:
    """Two polybus instances in one ``$share`` group: one answer and one event delivery."""
    first = build_twin(url, prefix, queue=f"{prefix}workers")
    second = build_twin(url, prefix, queue=f"{prefix}workers")
    async with first, second:
        result = await harness.run_nest_client("MQTT", nest_env(url, prefix), timeout=90)
        await harness.wait_until(lambda: bool(first.events or second.events))
        await asyncio.sleep(0.3)
    received = first.events + second.events
    assert result["sum"] == 10 and result["stream"] == [1, 2, 3]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    assert received == [harness.ORDER]  # delivered to one member of the group only
