"""Microservice lifecycle over the in-memory transport: hooks, ready signal, status, and a
listen() that fails or is cancelled leaving nothing open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from polybus import (
    ConfigError,
    ConnectionStatus,
    FailurePolicy,
    Microservice,
    ServerStatus,
    TransportError,
    create_client,
)
from polybus.abc import ConnectionReporter, MessageSink, RouteSpec
from polybus.serializers import JsonSerializer
from polybus.transports.memory import MemoryOptions, MemoryServerTransport, _bus


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def echo_service(url: str, **kwargs: object) -> Microservice:
    app = Microservice(url, **kwargs)

    @app.message_pattern("echo")
    def echo(data: object) -> object:
        return data

    return app


def listening_servers(app: Microservice) -> int:
    transport = app.transport
    assert isinstance(transport, MemoryServerTransport)
    return len(_bus(transport.options.name).servers)


async def test_hooks_run_in_order_at_their_moments(url: str) -> None:
    steps: list[str] = []
    app = echo_service(url, on_startup=[lambda: steps.append("kw startup")])

    @app.on_startup
    async def startup() -> None:
        steps.append(f"on_startup, receiving: {listening_servers(app)}")

    @app.after_startup
    def after_startup() -> None:
        steps.append(f"after_startup, receiving: {listening_servers(app)}")

    @app.on_shutdown
    async def shutdown() -> None:
        steps.append(f"on_shutdown, receiving: {listening_servers(app)}")

    @app.after_shutdown
    def after_shutdown() -> None:
        steps.append(f"after_shutdown, receiving: {listening_servers(app)}")

    async with app:
        steps.append("serving")
        async with create_client(url) as client:
            assert await client.send("echo", 1) == 1
    assert steps == [
        "kw startup",
        "on_startup, receiving: 0",
        "after_startup, receiving: 1",
        "serving",
        "on_shutdown, receiving: 1",
        "after_shutdown, receiving: 0",
    ]


async def test_decorators_return_the_function(url: str) -> None:
    app = echo_service(url)

    def hook() -> None:
        pass

    assert app.on_startup(hook) is hook
    assert app.after_shutdown(hook) is hook


@pytest.mark.parametrize("stage", ["on_startup", "after_startup"])
async def test_a_failing_startup_hook_aborts_listen_cleanly(url: str, stage: str) -> None:
    steps: list[str] = []
    app = echo_service(url, on_shutdown=[lambda: steps.append("on_shutdown")])

    def fail() -> None:
        raise RuntimeError("no database")

    getattr(app, stage)(fail)
    ready = asyncio.ensure_future(app.wait_ready())
    with pytest.raises(RuntimeError, match="no database"):
        await app.listen()
    with pytest.raises(RuntimeError, match="no database"):
        await ready
    assert listening_servers(app) == 0
    assert app.status is ServerStatus.STOPPED
    assert steps == []  # startup did not complete: no shutdown hooks
    await app.close()  # nothing to do, and no error
    async with create_client(url) as client:
        with pytest.raises(TransportError, match="no server listens"):
            await client.send("echo", 1)


async def test_wait_ready_raises_a_configuration_error_of_listen(url: str) -> None:
    app = echo_service(url, on_failure=FailurePolicy(dead_letter="dlq"))  # memory cannot
    runner = asyncio.create_task(app.run())
    with pytest.raises(ConfigError, match="cannot dead-letter"):
        await app.wait_ready()
    with pytest.raises(ConfigError):
        await runner
    assert app.status is ServerStatus.STOPPED


async def test_a_failing_shutdown_hook_is_logged_and_shutdown_goes_on(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    steps: list[str] = []
    app = echo_service(url)

    @app.on_shutdown
    def fail() -> None:
        raise RuntimeError("flush failed")

    app.on_shutdown(lambda: steps.append("second on_shutdown"))
    app.after_shutdown(lambda: steps.append("after_shutdown"))
    await app.listen()
    await app.close()
    assert steps == ["second on_shutdown", "after_shutdown"]
    assert listening_servers(app) == 0
    assert app.status is ServerStatus.STOPPED
    assert "on_shutdown hook" in caplog.text and "flush failed" in caplog.text


async def test_wait_ready_signals_a_run_in_a_task(url: str) -> None:
    app = echo_service(url)
    runner = asyncio.create_task(app.run())
    await app.wait_ready()
    assert app.status is ServerStatus.LISTENING
    async with create_client(url) as client:
        assert await client.send("echo", "hi") == "hi"
    await app.wait_ready()  # still ready: returns at once
    await app.close()
    await runner
    assert app.status is ServerStatus.STOPPED
    waiting = asyncio.ensure_future(app.wait_ready())  # closed: waits for the next listen()
    await asyncio.sleep(0)
    assert not waiting.done()
    await app.listen()
    await waiting
    await app.close()


async def test_cancelling_wait_ready_cancels_nothing_else(url: str) -> None:
    app = echo_service(url)
    waiter = asyncio.ensure_future(app.wait_ready())
    await asyncio.sleep(0)
    waiter.cancel()
    await app.listen()
    await app.wait_ready()
    await app.close()


async def test_status_changes_are_reported(url: str) -> None:
    app = echo_service(url)
    seen: list[ServerStatus] = []
    unsubscribe = app.watch_status(seen.append)
    assert app.status is ServerStatus.STOPPED
    await app.listen()
    await app.close()
    assert seen == [
        ServerStatus.STARTING,
        ServerStatus.LISTENING,
        ServerStatus.STOPPING,
        ServerStatus.STOPPED,
    ]
    unsubscribe()
    await app.listen()
    await app.close()
    assert len(seen) == 4
    assert "status=stopped" in repr(app)


class SlowJoin(ConnectionReporter, MemoryServerTransport):
    """A memory server whose listen() takes a moment after subscribing (a broker join), and
    that reports its connection like a reconnecting adapter."""

    def __init__(self, name: str) -> None:
        super().__init__(MemoryOptions(name=name), JsonSerializer())
        self.joining = asyncio.Event()
        self.closed = 0

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        await super().listen(routes, sink)
        self.joining.set()
        await asyncio.Event().wait()  # never joins: only a cancel ends it

    async def close(self) -> None:
        self.closed += 1
        await super().close()


async def test_a_cancelled_listen_leaves_nothing_open() -> None:
    transport = SlowJoin(uuid.uuid4().hex)
    app = Microservice(transport=transport)
    app.message_pattern("echo")(lambda data: data)
    ready = asyncio.ensure_future(app.wait_ready())
    listening = asyncio.create_task(app.listen())
    await transport.joining.wait()
    listening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listening
    assert transport.closed == 1
    assert _bus(transport.options.name).servers == []
    assert app.status is ServerStatus.STOPPED
    with pytest.raises(asyncio.CancelledError):
        await ready
    await app.close()  # a no-op
    assert transport.closed == 1


class Reporting(ConnectionReporter, MemoryServerTransport):
    def __init__(self, name: str) -> None:
        super().__init__(MemoryOptions(name=name), JsonSerializer())


async def test_connection_reports_move_the_status() -> None:
    transport = Reporting(uuid.uuid4().hex)
    app = Microservice(transport=transport)
    app.message_pattern("echo")(lambda data: data)
    seen: list[ServerStatus] = []
    app.watch_status(seen.append)
    transport.report_connection(ConnectionStatus.RECONNECTING)  # not listening: ignored
    await app.listen()
    transport.report_connection(ConnectionStatus.DISCONNECTED)
    assert app.status is ServerStatus.RECONNECTING
    transport.report_connection(ConnectionStatus.RECONNECTING)  # no change, no report
    transport.report_connection(ConnectionStatus.CONNECTED)
    assert app.status is ServerStatus.LISTENING
    await app.close()
    transport.report_connection(ConnectionStatus.CONNECTED)  # closed: ignored
    assert seen == [
        ServerStatus.STARTING,
        ServerStatus.LISTENING,
        ServerStatus.RECONNECTING,
        ServerStatus.LISTENING,
        ServerStatus.STOPPING,
        ServerStatus.STOPPED,
    ]


async def test_a_transport_that_gives_up_fails_the_service_and_ends_run() -> None:
    """A connection closed while listening (not by ``close()``) is a transport that gave
    up reconnecting: the service is FAILED, and ``run()`` shuts it down and raises, so that
    a supervisor can restart the process instead of it idling, subscribed to nothing."""
    transport = Reporting(uuid.uuid4().hex)
    shut_down: list[str] = []
    app = Microservice(transport=transport, on_shutdown=[lambda: shut_down.append("hook")])
    app.message_pattern("echo")(lambda data: data)
    seen: list[ServerStatus] = []
    app.watch_status(seen.append)
    running = asyncio.create_task(app.run())
    await app.wait_ready()
    transport.report_connection(ConnectionStatus.RECONNECTING)
    transport.report_connection(ConnectionStatus.CLOSED)
    with pytest.raises(TransportError, match="memory transport gave up reconnecting"):
        await running
    assert shut_down == ["hook"]
    assert seen == [
        ServerStatus.STARTING,
        ServerStatus.LISTENING,
        ServerStatus.RECONNECTING,
        ServerStatus.FAILED,
        ServerStatus.STOPPING,
        ServerStatus.STOPPED,
    ]


async def test_a_failed_service_started_by_listen_stays_failed_until_closed() -> None:
    transport = Reporting(uuid.uuid4().hex)
    app = Microservice(transport=transport)
    app.message_pattern("echo")(lambda data: data)
    await app.listen()
    transport.report_connection(ConnectionStatus.CLOSED)
    assert app.status is ServerStatus.FAILED
    transport.report_connection(ConnectionStatus.CONNECTED)  # given up: nothing restores it
    assert app.status is ServerStatus.FAILED
    await app.close()
    assert app.status is ServerStatus.STOPPED
    await app.listen()  # a new start serves again
    assert app.status is ServerStatus.LISTENING
    await app.close()
