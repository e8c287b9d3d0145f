"""polybus.fastapi on real uvicorn: the orders HTTP API calling billing on every transport.

Each test serves examples/orders_http.py's app with real uvicorn on a free loopback port,
as a hybrid app whose lifespan also serves the billing microservice (examples/billing.py's
handlers, under this test's own patterns) on the transport under test, and posts with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from examples import billing
from examples.orders_http import Billing, build_app
from polybus import (
    ClientRegistry,
    ConnectionStatus,
    Microservice,
    RpcException,
    TransportError,
    create_client,
)
from polybus.abc import SupportsCleanup
from polybus.config import features_of
from polybus.fastapi import client_dependency, json_lines, lifespan, sse
from polybus.testing.brokers import broker_url

ROOT = Path(__file__).resolve().parents[2]

BROKERS = ["redis", "nats", "rabbitmq", "kafka"]
TRANSPORTS = [
    pytest.param("tcp", id="tcp"),
    *(pytest.param(name, id=name, marks=pytest.mark.broker(name)) for name in BROKERS),
]


def _transport_url(name: str) -> str:
    if name == "tcp":
        return f"tcp://127.0.0.1:{harness.free_tcp_port()}"
    return broker_url(name)


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` with real uvicorn (lifespan on) on a free loopback port; an httpx
    client for it. Shutting down runs the lifespan's shutdown."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped before it started (lifespan failed?)")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield http
    finally:
        server.should_exit = True
        await task


@dataclass
class Patterns:
    """This test's patterns: objects where the transport has them (Kafka: strings)."""

    prefix: str
    objects: bool

    def __call__(self, name: str) -> Any:
        return {"cmd": self.prefix + name} if self.objects else self.prefix + name


async def _ticks(count: int) -> AsyncIterator[int]:
    for i in range(1, count + 1):
        await asyncio.sleep(0)
        yield i


async def _ticks_then_fail(count: int) -> AsyncIterator[int]:
    async for i in _ticks(count):
        yield i
    raise RpcException({"status": 409, "message": "ran out of ticks"})


def _missing(order_id: str) -> None:
    raise RpcException({"statusCode": 404, "message": f"no order {order_id}"})


async def _slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "late"


@dataclass
class Api:
    http: httpx.AsyncClient
    clients: ClientRegistry


@contextlib.asynccontextmanager
async def orders_api(transport: str, prefix: str) -> AsyncIterator[Api]:
    """examples/orders_http.py's app, serving billing on ``transport`` in its lifespan,
    plus routes for the cases the example has no route for."""
    url = _transport_url(transport)
    features = features_of(url)
    isolation = {features.isolation_option: f"{prefix}billing"} if features.isolation_option else {}
    pattern = Patterns(prefix, features.object_patterns)
    service = Microservice(url, name="billing", grace=1.0, **isolation)
    service.message_pattern(pattern("charge"))(billing.charge)
    service.event_pattern("order_placed")(billing.order_placed)  # the example emits it
    service.message_pattern(pattern("missing"))(_missing)
    service.message_pattern(pattern("slow"))(_slow)
    service.message_pattern(pattern("ticks"))(_ticks)
    service.message_pattern(pattern("ticks_then_fail"))(_ticks_then_fail)
    clients = ClientRegistry()
    clients.register("BILLING", url, **isolation)
    app = build_app(clients, charge_pattern=pattern("charge"), serve=[service])

    @app.get("/orders/{order_id}")
    async def find(order_id: str, client: Billing) -> Any:
        return await client.send(pattern("missing"), order_id)

    @app.get("/slow")
    async def slow(client: Billing) -> Any:
        return await client.send(pattern("slow"), 1.0, timeout=0.2)

    @app.get("/ticks/{count}")
    async def ticks(count: int, client: Billing) -> Any:
        return await sse(client.send(pattern("ticks"), count))

    @app.get("/ticks_lines/{count}")
    async def ticks_lines(count: int, client: Billing) -> Any:
        return await json_lines(client.send(pattern("ticks"), count))

    @app.get("/ticks_then_fail/{count}")
    async def ticks_then_fail(count: int, client: Billing) -> Any:
        return await sse(client.send(pattern("ticks_then_fail"), count))

    try:
        async with serving(app) as http:
            yield Api(http, clients)
    finally:
        if isinstance(service.transport, SupportsCleanup):
            await service.transport.delete_resources()


def sse_frames(text: str) -> list[tuple[str, str]]:
    """(event, data) of each Server-Sent Event in ``text`` (event "message" by default)."""
    frames = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        frames.append((fields.get("event", "message"), fields["data"]))
    return frames


# -- every transport ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_charge_returns_the_paid_invoice(transport: str, prefix: str) -> None:
    async with orders_api(transport, prefix) as api:
        response = await api.http.post("/orders/charge", json={"orderId": "ord_42", "amount": 1999})
    assert response.status_code == 200, response.text
    invoice = response.json()
    assert invoice["id"].startswith("inv_")
    assert (invoice["amount"], invoice["status"]) == (1999, "paid")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reply_too_late_is_a_504(transport: str, prefix: str) -> None:
    async with orders_api(transport, prefix) as api:
        response = await api.http.get("/slow")
    assert response.status_code == 504
    assert response.json() == {
        "statusCode": 504,
        "message": "Gateway Timeout",
        "error": "RequestTimeout",
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_rpc_exception_answers_with_its_status(transport: str, prefix: str) -> None:
    async with orders_api(transport, prefix) as api:
        missing = await api.http.get("/orders/ord_7")
        refused = await api.http.post("/orders/charge", json={"orderId": "ord_42", "amount": 0})
    assert missing.status_code == 404
    assert missing.json() == {
        "statusCode": 404,
        "message": "no order ord_7",
        "error": {"statusCode": 404, "message": "no order ord_7"},
    }
    # billing's own RpcException names no HTTP status: a bad gateway, with its payload.
    assert refused.status_code == 502
    assert refused.json()["error"] == {"code": "E_AMOUNT", "message": "amount must be positive"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_streamed_reply_arrives_as_server_sent_events_in_order(
    transport: str, prefix: str
) -> None:
    async with orders_api(transport, prefix) as api:
        response = await api.http.get("/ticks/50")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(response.text)
    assert frames == [*(("message", str(i)) for i in range(1, 51)), ("end", "null")]


# -- one transport is enough -------------------------------------------------------------


async def test_an_error_after_the_first_item_ends_the_stream_with_an_error_event(
    prefix: str,
) -> None:
    async with orders_api("tcp", prefix) as api:
        response = await api.http.get("/ticks_then_fail/3")
    assert response.status_code == 200
    frames = sse_frames(response.text)
    # every value before the error, in order, then the error as the last frame
    assert frames[:-1] == [("message", "1"), ("message", "2"), ("message", "3")]
    event, data = frames[-1]
    assert event == "error" and json.loads(data) == {
        "statusCode": 409,
        "message": "ran out of ticks",
        "error": {"status": 409, "message": "ran out of ticks"},
    }


@pytest.mark.broker("nats")
async def test_no_responders_is_a_503_that_names_no_address(url: str, prefix: str) -> None:
    clients = ClientRegistry()
    clients.register("BILLING", url)
    app = build_app(clients, charge_pattern={"cmd": f"{prefix}nobody"})
    async with serving(app) as http:
        response = await http.post("/orders/charge", json={"orderId": "ord_42", "amount": 1999})
    assert response.status_code == 503
    assert response.json() == {
        "statusCode": 503,
        "message": "Service Unavailable",
        "error": "NoRespondersError",
    }


async def test_the_lifespan_wraps_the_apps_own_and_closes_clients_at_shutdown() -> None:
    url = f"tcp://127.0.0.1:{harness.free_tcp_port()}"
    service = Microservice(url, name="billing")
    service.message_pattern({"cmd": "charge"})(billing.charge)
    clients = ClientRegistry()
    clients.register("BILLING", url)
    steps: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The clients are connected (and the service listening) before the app's own startup.
        steps.append(f"startup, billing {clients.get('BILLING').status.value}")
        yield {"greeting": "hello"}
        steps.append(f"shutdown, billing {clients.get('BILLING').status.value}")

    app = FastAPI(lifespan=lifespan(clients, serve=[service], wraps=own))

    @app.get("/greeting")
    async def greeting(request: Request) -> Any:
        return request.state.greeting

    async with serving(app) as http:
        assert (await http.get("/greeting")).json() == "hello"
        billing_client = clients.get("BILLING")
    assert steps == ["startup, billing connected", "shutdown, billing connected"]
    assert clients.names == ["BILLING"] and clients.get("BILLING") is not billing_client
    assert billing_client.status is ConnectionStatus.CLOSED


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def test_a_test_replaces_the_client_with_dependency_overrides_or_the_registry() -> None:
    service = Microservice("memory://orders-http-test", name="billing")
    service.message_pattern({"cmd": "charge"})(billing.charge)
    fake = Microservice("memory://orders-http-fake", name="fake-billing")

    @fake.message_pattern({"cmd": "charge"})
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        return {"id": "inv_fake", "amount": order["amount"], "status": "paid"}

    clients = ClientRegistry()
    clients.register("BILLING", "tcp://127.0.0.1:9")  # nothing listens: must be replaced
    order = {"orderId": "ord_42", "amount": 5}
    with clients.override("BILLING", create_client("memory://orders-http-test")):
        app = build_app(clients, serve=[service])
        async with serving(app) as http:
            real = (await http.post("/orders/charge", json=order)).json()
            async with create_client("memory://orders-http-fake") as other:
                await fake.listen()
                app.dependency_overrides[client_dependency("BILLING")] = lambda: other
                faked = (await http.post("/orders/charge", json=order)).json()
                await fake.close()
    assert real["id"].startswith("inv_") and real["id"] != "inv_fake"
    assert faked == {"id": "inv_fake", "amount": 5, "status": "paid"}


# -- the example as a user runs it -------------------------------------------------------


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited: {process.communicate()[1]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


def test_uvicorn_serves_the_example_as_the_readme_says() -> None:
    billing_port, http_port = harness.free_tcp_port(), harness.free_tcp_port()
    billing_url = f"tcp://127.0.0.1:{billing_port}"
    environment = {**os.environ, "POLYBUS_BILLING_URL": billing_url}
    commands = [
        [sys.executable, "-m", "polybus.cli", "run", "examples.billing:app", "--url", billing_url],
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.orders_http:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
        ],
    ]
    processes: list[subprocess.Popen[str]] = []
    errors: list[str] = []
    try:
        for command, port in zip(commands, (billing_port, http_port), strict=True):
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
            _wait_for_port(port, process)
        response = httpx.post(
            f"http://127.0.0.1:{http_port}/orders/charge",
            json={"orderId": "ord_42", "amount": 1999},
            timeout=30,
        )
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            errors.append(process.communicate(timeout=30)[1])
    assert response.status_code == 200, response.text
    invoice = response.json()
    assert invoice["id"].startswith("inv_")
    assert (invoice["amount"], invoice["status"]) == (1999, "paid")
    # uvicorn re-raises the SIGTERM it handled once its shutdown is complete.
    assert [process.returncode for process in processes] == [0, -signal.SIGTERM], errors
    assert "Application shutdown complete" in errors[0]


async def test_a_streamed_reply_arrives_as_json_lines(prefix: str) -> None:
    async with orders_api("tcp", prefix) as api:
        response = await api.http.get("/ticks_lines/20")
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in response.text.splitlines()] == list(range(1, 21))


async def test_a_client_that_leaves_mid_stream_ends_the_call(prefix: str) -> None:
    async with orders_api("tcp", prefix) as api:
        billing_client = api.clients.get("BILLING")
        async with api.http.stream("GET", "/ticks/100000") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == "data: 1"
        # The request's entry is removed once the HTTP response is dropped.
        for _ in range(200):
            if billing_client.pending_count == 0:
                break
            await asyncio.sleep(0.01)
        assert billing_client.pending_count == 0


async def test_a_failed_startup_stops_what_it_started() -> None:
    port = harness.free_tcp_port()
    service = Microservice(f"tcp://127.0.0.1:{port}", name="billing")
    service.message_pattern({"cmd": "charge"})(billing.charge)
    clients = ClientRegistry()
    clients.register("BILLING", f"tcp://127.0.0.1:{harness.free_tcp_port()}")  # nobody there
    with pytest.raises(TransportError):
        async with lifespan(clients, serve=[service])(FastAPI()):
            raise AssertionError("started without its client")
    with pytest.raises(OSError):  # the service stopped listening
        socket.create_connection(("127.0.0.1", port), 1).close()


async def test_a_stream_failing_before_its_first_value_answers_with_the_error_status(
    prefix: str,
) -> None:
    async with orders_api("tcp", prefix) as api:
        failed = await api.http.get("/ticks_then_fail/0")
        empty = await api.http.get("/ticks/0")
    assert failed.status_code == 409
    assert failed.json()["error"] == {"status": 409, "message": "ran out of ticks"}
    assert empty.status_code == 200 and sse_frames(empty.text) == [("end", "null")]
