"""Core semantics of ClientProxy and Microservice, over the in-memory transport."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from polybus import (
    ClientProxy,
    ConfigError,
    ConnectionStatus,
    Context,
    Microservice,
    RequestTimeout,
    RpcError,
    RpcException,
    TransportError,
    create_client,
    event_pattern,
    message_pattern,
)


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def slow_service(url: str) -> Microservice:
    """A service whose ``slow`` handler answers ``"done"`` after the seconds it is sent."""
    app = Microservice(url)

    @app.message_pattern("slow")
    async def slow(s: float) -> str:
        await asyncio.sleep(s)
        return "done"

    return app


async def test_sync_async_and_generator_handlers(url: str) -> None:
    app = Microservice(url)

    @app.message_pattern("sync")
    def sync(x: int) -> int:
        return x + 1

    @app.message_pattern("async")
    async def async_(x: int) -> int:
        return x + 2

    @app.message_pattern("gen")
    def gen(n: int) -> Any:
        yield from range(n)

    @app.message_pattern("agen")
    async def agen(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @app.message_pattern("none")
    def none(_: Any) -> None:
        return None

    async with app, create_client(url) as client:
        assert await client.send("sync", 1) == 2
        assert await client.send("async", 1) == 3
        assert [v async for v in client.send("gen", 3)] == [0, 1, 2]
        assert [v async for v in client.send("agen", 3)] == [0, 1, 2]
        assert await client.send("agen", 0) is None
        assert await client.send("none", 0) is None


async def test_methods_via_include_and_context_injection(url: str) -> None:
    class Billing:
        def __init__(self) -> None:
            self.events: list[Any] = []

        @message_pattern({"cmd": "charge"})
        async def charge(self, data: dict[str, Any], ctx: Context) -> Any:
            return {"amount": data["amount"], "is_request": ctx.is_request}

        @event_pattern("placed")
        def placed(self, data: Any) -> None:
            self.events.append(data)

    app = Microservice(url)
    billing = app.include(Billing())
    async with app, create_client(url) as client:
        assert await client.send({"cmd": "charge"}, {"amount": 5}) == {
            "amount": 5,
            "is_request": True,
        }
        await client.emit("placed", {"id": 1})
        for _ in range(50):
            if billing.events:
                break
            await asyncio.sleep(0.01)
        assert billing.events == [{"id": 1}]


class Charge(BaseModel):
    order_id: str
    amount: int


class Invoice(BaseModel):
    id: str
    amount: int


async def test_pydantic_payload_and_result(url: str) -> None:
    app = Microservice(url)

    @app.message_pattern("charge")
    def charge(data: Charge) -> Invoice:
        return Invoice(id=f"inv_{data.order_id}", amount=data.amount)

    async with app, create_client(url) as client:
        assert await client.send("charge", {"order_id": "1", "amount": 3}) == {
            "id": "inv_1",
            "amount": 3,
        }
        with pytest.raises(RpcError) as info:
            await client.send("charge", {"order_id": "1"})
        assert info.value.error["message"] == "Validation failed"
        assert info.value.error["errors"][0]["loc"] == ["amount"]


async def test_error_shapes(url: str) -> None:
    app = Microservice(url)

    @app.message_pattern("obj")
    def obj(_: Any) -> None:
        raise RpcException({"code": 1})

    @app.message_pattern("text")
    def text(_: Any) -> None:
        raise RpcException("nope")

    @app.message_pattern("bug")
    def bug(_: Any) -> None:
        raise KeyError("secret detail")

    async with app, create_client(url) as client:
        for pattern, error in [
            ("obj", {"code": 1}),
            ("text", {"status": "error", "message": "nope"}),
            ("bug", {"status": "error", "message": "Internal server error"}),
        ]:
            with pytest.raises(RpcError) as info:
                await client.send(pattern, {})
            assert info.value.error == error


async def test_send_is_cold_and_single_use(url: str) -> None:
    seen: list[Any] = []
    app = Microservice(url)

    @app.message_pattern("record")
    def record(x: Any) -> Any:
        seen.append(x)
        return x

    async with app, create_client(url) as client:
        call = client.send("record", 1)
        await asyncio.sleep(0.05)
        assert seen == []
        assert await call == 1
        with pytest.raises(RuntimeError):
            await call


async def test_timeout_per_call_and_per_client(url: str) -> None:
    app = slow_service(url)

    async with app, create_client(url, timeout=0.05) as client:
        with pytest.raises(RequestTimeout):
            await client.send("slow", 0.3)
        assert await client.send("slow", 0.1, timeout=2) == "done"
        assert client.pending_count == 0


async def test_computed_timeouts_share_one_timeout_queue(url: str) -> None:
    app = slow_service(url)

    async with app, create_client(url) as client:
        # what is left of a budget differs by microseconds from call to call
        timeouts = [0.2 + i * 1e-5 for i in range(20)]
        calls = [asyncio.ensure_future(client.send("slow", 1, timeout=t)) for t in timeouts]
        await asyncio.sleep(0.05)
        deadlines = client._deadlines
        assert deadlines is not None and len(deadlines._queues) == 1
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RequestTimeout) for r in results)
        assert client.pending_count == 0


async def test_cancelling_the_caller_releases_the_request(url: str) -> None:
    app = slow_service(url)

    async with app, create_client(url) as client:
        task = asyncio.ensure_future(client.send("slow", 1))
        await asyncio.sleep(0.05)
        assert client.pending_count == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pending_count == 0


async def test_close_fails_pending_and_reports_status(url: str) -> None:
    app = slow_service(url)

    statuses: list[ConnectionStatus] = []
    async with app:
        client = create_client(url)
        client.watch_status(statuses.append)
        task = asyncio.ensure_future(client.send("slow", 1))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(TransportError):
            await task
        with pytest.raises(TransportError):
            await client.send("slow", 0)
    assert statuses == [
        ConnectionStatus.CONNECTING,
        ConnectionStatus.CONNECTED,
        ConnectionStatus.CLOSED,
    ]


async def test_connect_failure_is_a_transport_error(url: str) -> None:
    client = create_client("tcp://127.0.0.1:1", timeout=1)
    with pytest.raises(TransportError):
        await client.send("x", 1)
    assert client.status is ConnectionStatus.DISCONNECTED
    await client.close()


async def test_graceful_shutdown_drains_in_flight_handlers(url: str) -> None:
    finished: list[int] = []
    app = Microservice(url)

    @app.message_pattern("work")
    async def work(n: int) -> int:
        await asyncio.sleep(0.2)
        finished.append(n)
        return n

    await app.listen()
    client = create_client(url)
    calls = [asyncio.ensure_future(client.send("work", i)) for i in range(5)]
    await asyncio.sleep(0.05)
    await app.close(grace=5)
    assert sorted(finished) == [0, 1, 2, 3, 4]
    assert sorted(await asyncio.gather(*calls)) == [0, 1, 2, 3, 4]
    await client.close()


async def test_shutdown_grace_cancels_stragglers(url: str) -> None:
    app = Microservice(url)

    @app.message_pattern("stuck")
    async def stuck(_: Any) -> None:
        await asyncio.sleep(30)

    await app.listen()
    client = create_client(url, timeout=5)
    call = asyncio.ensure_future(client.send("stuck", 1))
    await asyncio.sleep(0.05)
    await app.close(grace=0.1)
    assert app.in_flight == 0
    call.cancel()
    await client.close()


async def test_bounded_concurrency(url: str) -> None:
    running = 0
    peak = 0
    app = Microservice(url, max_concurrency=3)

    @app.message_pattern("work")
    async def work(_: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    async with app, create_client(url) as client:
        await asyncio.gather(*(client.send("work", i) for i in range(20)))
    assert peak == 3


async def test_event_handlers_all_run_and_a_failing_one_does_not_stop_others(url: str) -> None:
    seen: list[str] = []
    app = Microservice(url)

    @app.event_pattern("e")
    def one(_: Any) -> None:
        seen.append("one")
        raise ValueError("boom")

    @app.event_pattern("e")
    async def two(_: Any) -> None:
        seen.append("two")

    async with app, create_client(url) as client:
        await client.emit("e", {})
        await client.send("e", {})  # a request to an event pattern runs the event handlers
    assert seen.count("one") == 2 and seen.count("two") == 2


def test_bad_handler_signature_and_pattern_are_config_errors() -> None:
    app = Microservice("memory://x")
    with pytest.raises(ConfigError):

        @app.message_pattern("x")
        def two_payloads(a: Any, b: Any) -> None: ...

    with pytest.raises(ConfigError):
        message_pattern(None)
    with pytest.raises(ConfigError):
        ClientProxy.send(create_client("memory://x"), None)


async def test_emit_holds_its_task_until_done(url: str) -> None:
    """The event loop keeps only weak references to tasks: an emit() nobody awaits is held
    by its proxy until it is done, then forgotten."""
    app = Microservice(url)
    got: list[int] = []

    @app.event_pattern("e")
    def e(x: int) -> None:
        got.append(x)

    async with app, create_client(url) as client:
        task = client.emit("e", 1)
        assert task in client._emitting
        await task
        await asyncio.sleep(0)
        assert got == [1] and not client._emitting
