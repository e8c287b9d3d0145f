"""Kafka under broker restarts, on PRIVATE tansu brokers this module starts and restarts.

* port 29092, memory storage: a restart brings the broker back EMPTY (no topic, record,
  group or committed offset). The server must rejoin promptly and handle every event
  accepted after the broker came back.

The brokers run through ``.ci/kafka.sh`` with their own ``POLYBUS_TANSU_DIR`` (pid, log) and
the shared binary cache; they are stopped at the end of the module. Marked ``faults``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polybus import Microservice, create_client
from polybus.errors import PolybusError

pytest.importorskip("aiokafka")

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polybus" / "tansu"
MEMORY_PORT = 29092


class PrivateTansu:
    """A tansu broker of this test module, driven through ``.ci/kafka.sh``."""

    def __init__(self, port: int, storage: str) -> None:
        self.port = port
        self.url = f"kafka://127.0.0.1:{port}?fetch_max_wait_ms=10"
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
    broker = PrivateTansu(MEMORY_PORT, "memory://tansu/")
    broker.run("restart")  # a fresh, empty broker
    try:
        yield broker
    finally:
        broker.run("stop")


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
