"""Microservice lifecycle against real brokers: a ``listen()`` cancelled at any moment
(Kafka: during its group join, which takes seconds) leaves no connection and no task
behind, and ``close()`` afterwards does nothing; the hooks run around a real transport."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from private_process import PrivateProcess, free_port

from polybus import Microservice, ServerStatus, create_client
from polybus.abc import SupportsCleanup
from polybus.testing.brokers import broker_url

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts sockets in /proc/self/fd"
)

TRANSPORTS = ["tcp", "redis", "nats", "rabbitmq", "kafka", "mqtt"]
RELAY = str(Path(__file__).with_name("lagging_relay.py"))


def _url(transport: str) -> str:
    if transport == "tcp":
        return f"tcp://127.0.0.1:{free_port()}"
    return broker_url(transport)


def _through(url: str, port: int) -> str:
    """``url`` with its broker address replaced by 127.0.0.1:``port``."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


def build(transport: str, prefix: str, url: str | None = None) -> Microservice:
    """A service with one request and one event route, isolated by ``prefix``."""
    options: dict[str, Any] = {}
    if transport == "rabbitmq":
        options["queue"] = f"{prefix}-queue"
    if transport == "kafka":
        options["group_id"] = f"{prefix}-group"
    app = Microservice(url or _url(transport), grace=0.5, **options)

    @app.message_pattern(f"{prefix}.echo")
    def echo(data: Any) -> Any:
        return data

    @app.event_pattern(f"{prefix}.seen")
    def seen(data: Any) -> None:
        pass

    return app


def sockets() -> set[str]:
    """The sockets this process has open (their ``socket:[inode]`` names)."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


async def leftovers(tasks_before: set[asyncio.Task[Any]], sockets_before: set[str]) -> str:
    """What is still open: tasks and sockets that did not exist before, after letting the
    tasks that were told to stop finish (they may need a few loop turns)."""
    current = asyncio.current_task()
    for _ in range(200):
        tasks = {t for t in asyncio.all_tasks() - tasks_before if t is not current}
        opened = sockets() - sockets_before
        if not tasks and not opened:
            return ""
        await asyncio.sleep(0.05)
    return f"tasks: {sorted(map(repr, tasks))}; sockets: {sorted(opened)}"


async def cleanup(app: Microservice) -> None:
    transport = app.transport
    if isinstance(transport, SupportsCleanup):
        await transport.delete_resources()


@pytest.fixture
def prefix() -> str:
    return f"pblife{uuid.uuid4().hex[:10]}"


async def cancel_listen(app: Microservice, delay: float) -> tuple[bool, str]:
    """Cancel ``app.listen()`` ``delay`` s in and close the service: whether the cancel
    interrupted it (it is then stopped), and what it left open (:func:`leftovers`)."""
    app.transport  # noqa: B018 - built (and its URL checked) before the snapshot
    tasks_before, sockets_before = set(asyncio.all_tasks()), sockets()
    listening = asyncio.create_task(app.listen())
    await asyncio.sleep(delay)
    listening.cancel()
    try:
        await listening
        cancelled = False
    except asyncio.CancelledError:
        cancelled = True
    try:
        if cancelled:
            assert app.status is ServerStatus.STOPPED
        await app.close()  # after a cancel a no-op that does not raise, else an ordinary close
        return cancelled, await leftovers(tasks_before, sockets_before)
    finally:
        await cleanup(app)


async def cancel_listen_after(app: Microservice, delay: float) -> None:
    _, left = await cancel_listen(app, delay)
    assert left == "", f"cancelled {delay} s in"


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.001, 0.002, 0.005, 0.05, 0.3])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cancelled_listen_leaves_nothing_open(
    transport: str, delay: float, prefix: str
) -> None:
    await cancel_listen_after(build(transport, prefix), delay)


@pytest.mark.parametrize("transport", ["redis", "nats", "rabbitmq", "mqtt"])
async def test_a_listen_cancelled_at_each_stage_of_a_slow_connect_leaves_nothing_open(
    transport: str, prefix: str
) -> None:
    """Through a relay that holds each chunk 5 ms each way, every step of the connect and
    setup takes a visible 10 ms: cancelled at 16 moments spread over a whole listen(), each
    stage is hit by time rather than by luck. (Found this way: a RabbitMQ connection closed
    while its first attempt was midway left that attempt's AMQP connection open.)"""
    direct = broker_url(transport)
    port = free_port()
    relay = PrivateProcess(
        [sys.executable, RELAY, str(port), str(urlsplit(direct).port), "0.005"], port
    )
    relay.start()
    try:
        url = _through(direct, port)
        loop = asyncio.get_running_loop()
        app = build(transport, prefix, url)
        started = loop.time()
        await app.listen()
        took = loop.time() - started
        await app.close()
        await cleanup(app)
        for moment in range(1, 17):
            await cancel_listen_after(build(transport, prefix, url), took * moment / 17)
    finally:
        relay.stop()


@pytest.mark.broker("kafka")
async def test_kafka_listen_cancelled_during_the_group_join_closes_consumer_and_producer(
    prefix: str,
) -> None:
    """The join takes seconds: cancelled in the middle of it, the consumer, producer and the
    transport's own tasks are all gone, their sockets closed (before, they stayed open, and
    ``close()`` did nothing because the microservice did not count as listening)."""
    app = build("kafka", prefix)
    transport: Any = app.transport
    tasks_before, sockets_before = set(asyncio.all_tasks()), sockets()
    listening = asyncio.create_task(app.listen())
    for _ in range(600):  # the consumer subscribed: the group join is under way
        if transport._consumer is not None:
            break
        await asyncio.sleep(0.01)
    assert transport._consumer is not None, "the consumer never started"
    assert not listening.done(), "the group join finished before it could be cancelled"
    listening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listening
    try:
        assert transport._consumer is None and transport._outlet.producer is None
        assert transport._tasks == []
        assert app.status is ServerStatus.STOPPED
        await app.close()
        assert await leftovers(tasks_before, sockets_before) == ""
    finally:
        await cleanup(app)


@pytest.mark.broker("redis")
async def test_hooks_around_a_real_transport(prefix: str) -> None:
    app = build("redis", prefix)
    steps: list[str] = []
    url = broker_url("redis")

    @app.after_startup
    async def greet() -> None:
        # the transport receives by now: a request sent from here is answered
        async with create_client(url) as client:
            steps.append(f"after_startup: {await client.send(f'{prefix}.echo', 'hi')}")

    @app.on_shutdown
    async def last_call() -> None:
        async with create_client(url) as client:
            steps.append(f"on_shutdown: {await client.send(f'{prefix}.echo', 'bye')}")

    app.after_shutdown(lambda: steps.append(f"after_shutdown: {app.status.value}"))
    runner = asyncio.create_task(app.run())
    await app.wait_ready()
    assert steps == ["after_startup: hi"]
    await app.close()
    await runner
    assert steps == ["after_startup: hi", "on_shutdown: bye", "after_shutdown: stopped"]
