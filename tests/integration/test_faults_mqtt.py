"""MQTT faults against a PRIVATE Mosquitto (127.0.0.1:11883, .ci/mqtt-faults.sh), never
the shared one: QoS 1 events through a broker restart with a persistent session, pending
calls through a restart, and a bounded soak of 100 calls in flight.

``POLYBUS_MQTT_SOAK_SECONDS`` sets the soak's length (default 15; the report's figure
used 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from polybus import ConnectionStatus, Microservice, create_client
from polybus.errors import TransportError
from polybus.testing.brokers import require
from polybus.testing.faults import run_command

pytest.importorskip("aiomqtt")

pytestmark = pytest.mark.faults

PORT = 11883
URL = f"mqtt://127.0.0.1:{PORT}"
SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "mqtt-faults.sh"


@pytest.fixture(scope="module")
def private_broker() -> Iterator[str]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        require("mosquitto is not installed: the MQTT fault tests run a private one")
    env = {**os.environ, "MQTT_FAULTS_PORT": str(PORT)}
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, env=env, timeout=30)
    try:
        yield URL
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], check=False, env=env, timeout=30)


async def restart_broker() -> float:
    started = time.monotonic()
    code, out = await run_command(["bash", str(SCRIPT), "restart"], timeout=30)
    assert code == 0, out
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def event_sink(url: str, route: str, received: set[int]) -> AsyncIterator[Microservice]:
    """A server slower than its producers, so received messages wait in its queue."""
    app = Microservice(url, max_concurrency=4)

    @app.event_pattern(route)
    async def take(data: dict[str, Any]) -> None:
        await asyncio.sleep(0.005)
        received.add(data["n"])

    @app.message_pattern(f"{route}/echo")
    def echo(data: Any) -> Any:
        return data

    async with app:
        yield app


STALL = 30.0
"""Seconds without a new event after which the events still missing count as lost."""


async def test_no_accepted_qos1_event_is_lost_through_a_broker_restart(
    private_broker: str,
) -> None:
    """Producers publish QoS 1 events before, during and after a restart; the server has
    a persistent session. Every event whose emit returned (PUBACK) is handled."""
    route = f"faults/{uuid.uuid4().hex[:8]}/events"
    server_url = f"{private_broker}?client_id=srv-{uuid.uuid4().hex[:8]}&clean_session=false&qos=1"
    received: set[int] = set()
    accepted: set[int] = set()
    refused = 0
    next_n = iter(range(10**9))
    stop = asyncio.Event()
    async with (
        event_sink(server_url, route, received),
        create_client(f"{private_broker}?qos=1", timeout=10) as client,
    ):

        async def produce() -> None:
            nonlocal refused
            while not stop.is_set():
                n = next(next_n)
                try:
                    await client.emit(route, {"n": n})
                except TransportError:
                    refused += 1  # not accepted: the connection dropped before its PUBACK
                else:
                    accepted.add(n)

        producers = [asyncio.ensure_future(produce()) for _ in range(4)]
        await asyncio.sleep(1.0)
        before = len(accepted)
        downtime = await restart_broker()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*producers), 30)
        assert len(accepted) > before > 0, "events must be accepted before and after the restart"
        # The broker hands a reconnected session its backlog at most max_inflight (20)
        # unacknowledged messages at a time: a large backlog takes a while. Wait while it
        # still arrives; an event is lost when nothing more came for STALL seconds.
        stalled_at, seen = time.monotonic() + STALL, len(received)
        while not accepted <= received and time.monotonic() < stalled_at:
            await asyncio.sleep(0.1)
            if len(received) > seen:
                stalled_at, seen = time.monotonic() + STALL, len(received)
    lost = sorted(accepted - received)
    print(
        f"\nmqtt qos1 restart: accepted={len(accepted)} received={len(received & accepted)} "
        f"refused={refused} lost={len(lost)} restart={downtime:.2f}s"
    )
    assert not lost, f"{len(lost)} accepted events lost, first {lost[:10]}"


async def test_pending_calls_fail_and_the_client_recovers_after_a_restart(
    private_broker: str,
) -> None:
    """Calls in flight when the broker goes away fail with TransportError (no hang); the
    client reports RECONNECTING then CONNECTED; the server resubscribed, so calls work."""
    route = f"faults/{uuid.uuid4().hex[:8]}/slow"
    app = Microservice(private_broker)

    @app.message_pattern(route)
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async with app, create_client(private_broker, timeout=20) as client:
        statuses: list[ConnectionStatus] = []
        client.watch_status(statuses.append)
        assert await client.send(route, 0) == 0
        pending = [asyncio.ensure_future(client.send(route, 5)) for _ in range(20)]
        await asyncio.sleep(0.3)
        await restart_broker()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 15)
        assert all(isinstance(r, TransportError) for r in results), results
        assert await client.send(route, 0.01) == 0.01
        assert ConnectionStatus.RECONNECTING in statuses
        assert statuses[-1] == ConnectionStatus.CONNECTED
        assert client.pending_count == 0


async def test_100_calls_in_flight_do_not_hang(private_broker: str) -> None:
    """A bounded soak: 100 workers call in a loop; every call is answered in time."""
    seconds = float(os.environ.get("POLYBUS_MQTT_SOAK_SECONDS", "15"))
    route = f"soak/{uuid.uuid4().hex[:8]}"
    app = Microservice(private_broker)

    @app.message_pattern(route)
    def echo(data: Any) -> Any:
        return data

    async with app, create_client(private_broker, timeout=10) as client:
        done = 0
        latencies: list[float] = []
        end = time.monotonic() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < end:
                started = time.monotonic()
                assert await client.send(route, [w, i]) == [w, i]
                latencies.append(time.monotonic() - started)
                done += 1
                i += 1

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(100))), seconds + 30)
        assert client.pending_count == 0
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"\nmqtt soak: {done} calls in {seconds:.0f}s at 100 in flight = {done / seconds:.0f}/s, "
        f"p50={latencies[len(latencies) // 2] * 1000:.1f}ms p99={p99 * 1000:.1f}ms "
        f"max={latencies[-1] * 1000:.1f}ms"
    )
    assert done > 0


async def test_a_client_that_gave_up_reconnecting_fails_calls_at_once(
    private_broker: str,
) -> None:
    """With ``retry_attempts``, a client whose broker stays away reports CLOSED, and a
    call without a timeout fails with TransportError instead of waiting for ever."""
    client = create_client(f"{private_broker}?retry_attempts=2&retry_delay=0.05", timeout=None)
    statuses: list[ConnectionStatus] = []
    client.watch_status(statuses.append)
    await client.connect()
    code, out = await run_command(["bash", str(SCRIPT), "stop"], timeout=30)
    assert code == 0, out
    try:
        for _ in range(200):
            if statuses[-1] == ConnectionStatus.CLOSED:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == ConnectionStatus.CLOSED, statuses
        with pytest.raises(TransportError):
            await asyncio.wait_for(client.send("gone", 1), 10)
    finally:
        await client.close()
        code, out = await run_command(["bash", str(SCRIPT), "start"], timeout=30)
        assert code == 0, out  # the next cases need it back
