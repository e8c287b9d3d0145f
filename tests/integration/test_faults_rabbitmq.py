"""RabbitMQ fault cases against a PRIVATE node (``.ci/rabbitmq-faults.sh``, port 5673), so
restarting the broker never disturbs the shared one on 5672.

Needs the Debian ``rabbitmq-server`` package (the node is started from it, plugins off).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from polybus import ClientProxy, Microservice, TransportError, create_client
from polybus.testing.brokers import require

aio_pika = pytest.importorskip("aio_pika")

pytestmark = pytest.mark.faults

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "rabbitmq-faults.sh"
PRIVATE_URL = "amqp://guest:guest@127.0.0.1:5673/"


def _script(action: str) -> None:
    subprocess.run(["bash", str(SCRIPT), action], check=True, timeout=120)


@pytest.fixture(scope="module")
def private_node() -> Iterator[str]:
    """The private node, started for this module and stopped after it."""
    if shutil.which("rabbitmq-server") is None:
        require("the RabbitMQ fault tests need rabbitmq-server (Debian package) to run a node")
    _script("start")
    yield PRIVATE_URL
    _script("stop")


@pytest.fixture
async def queue(private_node: str) -> AsyncIterator[str]:
    name = f"pbfault-{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(private_node)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


async def _restart() -> None:
    process = await asyncio.create_subprocess_exec("bash", str(SCRIPT), "restart")
    assert await asyncio.wait_for(process.wait(), 120) == 0


async def until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passed; returns its last value."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


EVENTS = 10_000
PUBLISHERS = 100
RESTART_AT = (2_000, 6_000)
"""Restart the broker once this many emits have resolved (publishing goes on meanwhile)."""
PACE_S = 0.05
"""Pause of each publisher between its emits (at most 2,000 events/s in all), so that
publishing is still going on when the broker stops, confirmed or not."""


async def test_durable_events_survive_broker_restarts(private_node: str, queue: str) -> None:
    """Every event whose emit() resolved is handled, across two broker restarts, with the
    durable recipe's default options (persistent messages, no_ack=false).

    The consumer starts once publishing is over: the events wait in the queue through both
    restarts (a backlog is when an unconfirmed publish is lost: the queue stops before the
    connection that still takes publishes for it)."""
    url = f"{private_node}?queue={queue}&persistent=true&no_ack=false"
    handled: set[int] = set()
    resolved: set[int] = set()
    failed = 0
    app = Microservice(url)

    @app.event_pattern("evt")
    def on_event(data: dict[str, int]) -> None:
        handled.add(data["id"])

    async def publisher(client: ClientProxy, first: int) -> None:
        nonlocal failed
        for event_id in range(first, EVENTS, PUBLISHERS):
            try:
                await client.emit("evt", {"id": event_id})
            except TransportError:
                failed += 1
                continue
            resolved.add(event_id)
            await asyncio.sleep(PACE_S)

    async def restarter() -> int:
        restarted = 0
        for threshold in RESTART_AT:
            await until(lambda n=threshold: len(resolved) >= n or publishing.done(), 120)
            if publishing.done():
                break
            await _restart()
            restarted += 1
        return restarted

    async with create_client(url) as client:
        publishing = asyncio.gather(*(publisher(client, n) for n in range(PUBLISHERS)))
        restarts = asyncio.create_task(restarter())
        await asyncio.wait_for(publishing, 300)  # an emit waits at most connect_timeout
        restarted = await asyncio.wait_for(restarts, 180)
        assert restarted == len(RESTART_AT), "publishing outran the restarts"
    async with app:
        await until(lambda: resolved <= handled, 20)
    lost = sorted(resolved - handled)
    assert not lost, f"{len(lost)} of {len(resolved)} resolved emits lost: {lost[:20]}"
    assert len(resolved) + failed == EVENTS
