"""``Microservice.status`` follows the broker connection: a private broker (a free port of its
own, never a shared one) is stopped and started again, and the server goes
listening → reconnecting → listening, then answers again.

Redis, NATS and Mosquitto run as throwaway processes started here (skipped without their
binaries), so these cases run in the main suite. The RabbitMQ case needs a private node
(``.ci/rabbitmq-faults.sh`` on port 25850) and is a ``faults`` case.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from private_process import PrivateProcess, free_port

from polybus import Microservice, ServerStatus, TransportError, create_client
from polybus.testing.brokers import require

ROOT = Path(__file__).resolve().parents[2]


CLIENT_LIBRARY = {"redis": "redis", "nats": "nats", "mqtt": "aiomqtt"}
"""The client library each private-broker case needs."""


@contextmanager
def private_broker(kind: str) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """``(url, stop, start)`` of a private ``kind`` broker, stopped at the end."""
    binary = {"redis": "redis-server", "nats": "nats-server", "mqtt": "mosquitto"}[kind]
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        require(f"the {kind} status test needs {binary} for a private broker")
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "redis":
            port = free_port()
            command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
            command += ["--save", "", "--appendonly", "no"]
            url = f"redis://127.0.0.1:{port}"
        elif kind == "nats":
            port = free_port()
            command = [shutil.which(binary) or f"/usr/sbin/{binary}", "-a", "127.0.0.1"]
            command += ["-p", str(port)]
            url = f"nats://127.0.0.1:{port}"
        else:
            port = free_port()
            config = Path(tmp) / "mosquitto.conf"
            config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
            command = [shutil.which(binary) or f"/usr/sbin/{binary}", "-c", str(config)]
            url = f"mqtt://127.0.0.1:{port}"
        broker = PrivateProcess(command, port)
        broker.start()
        try:
            yield url, broker.stop, broker.start
        finally:
            broker.stop()


async def wait_for(app: Microservice, status: ServerStatus, within: float = 30) -> None:
    """Wait (bounded, for a broken build not to hang) until ``app`` reports ``status``."""
    reached = asyncio.Event()
    unsubscribe = app.watch_status(lambda s: reached.set() if s is status else None)
    try:
        if app.status is not status:
            await asyncio.wait_for(reached.wait(), within)
    finally:
        unsubscribe()


async def restart_and_watch(
    url: str, stop: Callable[[], Any], start: Callable[[], Any], **options: Any
) -> list[ServerStatus]:
    """Serve on ``url``, restart the broker, and return the statuses seen meanwhile."""
    route = f"pbstatus.{uuid.uuid4().hex[:10]}"
    app = Microservice(url, **options)
    app.message_pattern(route)(lambda data: data)
    seen: list[ServerStatus] = []
    app.watch_status(seen.append)
    await app.listen()
    try:
        await asyncio.to_thread(stop)
        await wait_for(app, ServerStatus.RECONNECTING)
        await asyncio.to_thread(start)
        await wait_for(app, ServerStatus.LISTENING)
        async with create_client(url, **options) as client:
            assert await client.send(route, "back", timeout=10) == "back"
    finally:
        await app.close()
    return seen


EXPECTED = [
    ServerStatus.STARTING,
    ServerStatus.LISTENING,
    ServerStatus.RECONNECTING,
    ServerStatus.LISTENING,
    ServerStatus.STOPPING,
    ServerStatus.STOPPED,
]


@pytest.mark.parametrize("kind", ["redis", "nats", "mqtt"])
async def test_status_follows_a_broker_restart(kind: str) -> None:
    pytest.importorskip(CLIENT_LIBRARY[kind])
    options: dict[str, Any] = {}
    if kind in ("redis", "mqtt"):
        options["max_retry_delay"] = 0.5
    with private_broker(kind) as (url, stop, start):
        assert await restart_and_watch(url, stop, start, **options) == EXPECTED


GIVING_UP = {
    "redis": "retry_attempts=2&retry_delay=0.05",
    "nats": "max_reconnect_attempts=2&reconnect_time_wait=0.05",
    "mqtt": "retry_attempts=2&retry_delay=0.05",
}
"""Each transport's bounded reconnect, as URL options."""


@pytest.mark.parametrize("kind", list(GIVING_UP))
async def test_a_transport_that_gives_up_ends_run_with_an_error(kind: str) -> None:
    """With a bounded reconnect and a broker that stays down, the service fails: ``run()``
    shuts it down and raises, so that a supervisor restarts it (before, it went on
    running, subscribed to nothing, its status "reconnecting" for ever)."""
    pytest.importorskip(CLIENT_LIBRARY[kind])
    with private_broker(kind) as (url, stop, _):
        app = Microservice(f"{url}?{GIVING_UP[kind]}")
        app.message_pattern(f"pbstatus.{uuid.uuid4().hex[:10]}")(lambda data: data)
        seen: list[ServerStatus] = []
        app.watch_status(seen.append)
        running = asyncio.create_task(app.run())
        await app.wait_ready()
        await asyncio.to_thread(stop)
        with pytest.raises(TransportError, match="gave up reconnecting"):
            await asyncio.wait_for(running, 60)
    assert seen[-3:] == [ServerStatus.FAILED, ServerStatus.STOPPING, ServerStatus.STOPPED]
    assert seen[:3] == [ServerStatus.STARTING, ServerStatus.LISTENING, ServerStatus.RECONNECTING]


RMQ_SCRIPT = ROOT / ".ci" / "rabbitmq-faults.sh"
RMQ_PORT = 25850


def _rabbitmq(action: str) -> None:
    env = {
        **os.environ,
        "POLYBUS_RMQ_FAULTS_PORT": str(RMQ_PORT),
        "POLYBUS_RMQ_FAULTS_DIR": f"/tmp/polybus-status-rabbitmq-{RMQ_PORT}",
    }
    subprocess.run(["bash", str(RMQ_SCRIPT), action], check=True, timeout=180, env=env)


@pytest.mark.faults
async def test_rabbitmq_status_follows_a_node_restart() -> None:
    pytest.importorskip("aio_pika")
    if shutil.which("rabbitmq-server") is None:
        require("the RabbitMQ status test needs rabbitmq-server (Debian package) for a node")
    await asyncio.to_thread(_rabbitmq, "start")
    try:
        url = f"amqp://guest:guest@127.0.0.1:{RMQ_PORT}/"
        seen = await restart_and_watch(
            url,
            lambda: _rabbitmq("stop"),
            lambda: _rabbitmq("start"),
            queue=f"pbstatus-{uuid.uuid4().hex[:10]}",
            reconnect_interval=0.5,
        )
        assert seen == EXPECTED
    finally:
        await asyncio.to_thread(_rabbitmq, "stop")


KAFKA_PORT = 25860


def _tansu(action: str) -> None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polybus" / "tansu"
    env = {
        **os.environ,
        "POLYBUS_TANSU_PORT": str(KAFKA_PORT),
        "POLYBUS_TANSU_DIR": str(cache.parent / f"tansu-private-{KAFKA_PORT}"),
        "POLYBUS_TANSU_CACHE": os.environ.get("POLYBUS_TANSU_CACHE", str(cache)),
        "POLYBUS_TANSU_STORAGE": "memory://tansu/",
    }
    subprocess.run(
        ["bash", str(ROOT / ".ci" / "kafka.sh"), action],
        check=True,
        timeout=180,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@pytest.mark.faults
@pytest.mark.timeout(300)
async def test_kafka_status_follows_a_broker_restart() -> None:
    """The server notices the cluster gone and back (it polls once a second)."""
    pytest.importorskip("aiokafka")
    await asyncio.to_thread(_tansu, "restart")
    try:
        seen = await restart_and_watch(
            f"kafka://127.0.0.1:{KAFKA_PORT}?fetch_max_wait_ms=10",
            lambda: _tansu("stop"),
            lambda: _tansu("start"),
            group_id=f"pbstatus-{uuid.uuid4().hex[:10]}",
        )
        assert seen == EXPECTED
    finally:
        await asyncio.to_thread(_tansu, "stop")
