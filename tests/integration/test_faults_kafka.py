"""Kafka under broker restarts, on PRIVATE tansu brokers this module starts and restarts.

* port 29092, memory storage: a restart brings the broker back EMPTY (no topic, record,
  group or committed offset). The server must rejoin promptly and handle every event
  accepted after the broker came back.
* port 29093, S3 storage in a private S3 server (moto_server on 39093; the tansu build CI
  uses has no PostgreSQL engine): a restart keeps the data. Every event whose emit()
  resolved while the broker restarted twice must be handled.

The brokers run through ``.ci/kafka.sh`` with their own ``POLYBUS_TANSU_DIR`` (pid, log) and
the shared binary cache; they are stopped at the end of the module. Marked ``faults``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polybus import Microservice, create_client
from polybus.errors import PolybusError
from polybus.testing.brokers import require
from polybus.transports.kafka import KafkaOptions

pytest.importorskip("aiokafka")

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polybus" / "tansu"
MEMORY_PORT = 29092
DURABLE_PORT = 29093


class PrivateTansu:
    """A tansu broker of this test module, driven through ``.ci/kafka.sh``."""

    def __init__(self, port: int, storage: str, fetch_max_wait_ms: int) -> None:
        self.port = port
        self.url = f"kafka://127.0.0.1:{port}?fetch_max_wait_ms={fetch_max_wait_ms}"
        self.env = {
            **os.environ,
            "POLYBUS_TANSU_PORT": str(port),
            "POLYBUS_TANSU_DIR": str(CACHE.parent / f"tansu-private-{port}"),
            "POLYBUS_TANSU_CACHE": os.environ.get("POLYBUS_TANSU_CACHE", str(CACHE)),
            "POLYBUS_TANSU_STORAGE": storage,
        }

    def run(self, command: str) -> None:
        subprocess.run(
            ["bash", str(ROOT / ".ci" / "kafka.sh"), command],
            env=self.env,
            check=True,
            timeout=180,
            stdout=subprocess.DEVNULL,
        )

    async def restart(self) -> None:
        await asyncio.to_thread(self.run, "restart")


@pytest.fixture(scope="module")
def memory_tansu() -> Iterator[PrivateTansu]:
    broker = PrivateTansu(MEMORY_PORT, "memory://tansu/", 10)
    broker.run("restart")  # a fresh, empty broker
    try:
        yield broker
    finally:
        broker.run("stop")


@pytest.fixture(scope="module")
def durable_tansu() -> Iterator[PrivateTansu]:
    # With S3 storage tansu 0.6 stops answering fetches that wait 10 ms (a consumer stalls
    # with records waiting): the default wait is kept.
    if not (shutil.which("moto_server") or (ROOT / ".venv" / "bin" / "moto_server").exists()):
        require("a durable tansu stores in a private S3 server: pip install 'moto[server]'")
    broker = PrivateTansu(DURABLE_PORT, "s3://polybus-faults/", 500)
    broker.run("destroy")  # no data of an earlier run
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("destroy")


class Publisher:
    """Emits numbered events until stopped; remembers the ones whose emit() resolved."""

    def __init__(self, client: Any, pattern: str) -> None:
        self.client = client
        self.pattern = pattern
        self.accepted: dict[int, float] = {}
        self.failed = 0
        self._next = 0

    async def run(self, stop: asyncio.Event, pause: float = 0.002) -> None:
        while not stop.is_set():
            n = self._next
            self._next += 1
            try:
                await asyncio.wait_for(self.client.emit(self.pattern, {"n": n}), 10)
            except (PolybusError, asyncio.TimeoutError):
                self.failed += 1
                await asyncio.sleep(0.05)
                continue
            self.accepted[n] = time.monotonic()
            await asyncio.sleep(pause)


async def _until(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_broker_back_empty_loses_no_event_accepted_after_it(
    memory_tansu: PrivateTansu, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polybus")
    prefix = f"pbkf{uuid.uuid4().hex[:10]}"
    pattern = f"{prefix}.event"
    handled: dict[int, float] = {}
    app = Microservice(memory_tansu.url, group_id=f"{prefix}-group", grace=0.2)

    @app.event_pattern(pattern)
    async def event(data: Any) -> None:
        handled.setdefault(data["n"], time.monotonic())

    await app.listen()
    client = create_client(memory_tansu.url, timeout=10)
    publisher = Publisher(client, pattern)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        assert await _until(lambda: len(handled) >= 200, 30), "no traffic before the restart"
        caplog.clear()
        await memory_tansu.restart()
        back = time.monotonic()
        rejoined = await _until(lambda: any(t > back for t in handled.values()), 60)
        rejoin_s = min((t for t in handled.values() if t > back), default=back) - back
        await asyncio.sleep(5)  # traffic after the rejoin
        stop.set()
        await task
        after = {n for n, t in publisher.accepted.items() if t > back}
        await _until(lambda: after <= handled.keys(), 30)
        lost = sorted(after - handled.keys())
        commit_failures = [
            r.getMessage()
            for r in caplog.records
            if "OffsetCommit failed" in r.getMessage() or "commit of" in r.getMessage()
        ]
        logging.getLogger(__name__).warning(
            "broker back empty: rejoin %.2fs, %d accepted after, %d lost, %d commit failures",
            rejoin_s,
            len(after),
            len(lost),
            len(commit_failures),
        )
        assert rejoined, "no event handled within 60s of the broker coming back"
        assert after, "no event was accepted after the broker came back"
        assert not lost, f"{len(lost)} of {len(after)} events accepted after the restart lost"
        assert len(commit_failures) <= 5, commit_failures[:10]  # no log flood
    finally:
        stop.set()
        await task
        await client.close()
        await app.close(grace=0.5)


async def test_durable_broker_restarted_twice_loses_no_accepted_event(
    durable_tansu: PrivateTansu,
) -> None:
    publishers, per_publisher = 100, 100
    options = KafkaOptions.from_url(durable_tansu.url)
    assert options.producer_kwargs("client")["acks"] == "all"  # emit() resolves on the ack
    prefix = f"pbkd{uuid.uuid4().hex[:10]}"
    pattern = f"{prefix}.event"
    handled: set[int] = set()
    app = Microservice(durable_tansu.url, group_id=f"{prefix}-group", grace=0.2)

    @app.event_pattern(pattern)
    async def event(n: int) -> None:
        handled.add(n)

    await app.listen()
    client = create_client(durable_tansu.url, timeout=15)
    accepted: set[int] = set()
    failures = 0

    async def publish(first: int) -> None:
        nonlocal failures
        for n in range(first, first + per_publisher):
            while True:  # the same id again until an emit() of it resolves
                try:
                    await asyncio.wait_for(client.emit(pattern, n), 15)
                except (PolybusError, asyncio.TimeoutError):
                    failures += 1
                    await asyncio.sleep(0.2)
                    continue
                accepted.add(n)
                break

    async def restart_twice() -> None:
        total = publishers * per_publisher
        for share in (0.3, 0.6):
            await _until(lambda: len(accepted) >= total * share, 120)  # noqa: B023
            await durable_tansu.restart()

    try:
        started = time.monotonic()
        await asyncio.gather(
            restart_twice(), *(publish(p * per_publisher) for p in range(publishers))
        )
        published_s = time.monotonic() - started
        await _until(lambda: accepted <= handled, 60)
        lost = sorted(accepted - handled)
        logging.getLogger(__name__).warning(
            "durable broker restarted twice: %d accepted in %.1fs (%d failed emits), %d lost",
            len(accepted),
            published_s,
            failures,
            len(lost),
        )
        assert len(accepted) == publishers * per_publisher
        assert not lost, f"{len(lost)} accepted events never handled: {lost[:20]}"
    finally:
        await client.close()
        await app.close(grace=0.5)
