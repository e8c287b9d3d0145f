"""Client and server middleware (polybus.middleware), over the in-memory transport."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from polybus import (
    ClientMiddleware,
    ConfigError,
    Context,
    FailurePolicy,
    Inbound,
    Microservice,
    Outgoing,
    Record,
    RequestTimeout,
    RpcError,
    RpcException,
    ServerMiddleware,
    create_client,
)
from polybus.middleware import STREAMED, EmitNext, HandleNext, SendNext, StreamNext


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def _ours(headers: dict[str, str] | None) -> dict[str, str]:
    """The headers the test set (the transport adds its own, e.g. the deadline)."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith("x-polybus-")}


class Trail(ServerMiddleware, ClientMiddleware):
    """Writes where it ran into a shared list, on both sides."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        self.trail.append(f"{self.name}>")
        result = await call_next(message)
        self.trail.append(f"<{self.name}")
        return result

    async def send(self, message: Outgoing, call_next: SendNext) -> Any:
        self.trail.append(f"{self.name}:{message.kind}")
        return await call_next(message)

    async def emit(self, message: Outgoing, call_next: EmitNext) -> None:
        self.trail.append(f"{self.name}:{message.kind}")
        await call_next(message)


async def test_order_service_outside_route_first_listed_outermost(url: str) -> None:
    trail: list[str] = []
    app = Microservice(url, middleware=[Trail("s1", trail)])
    app.use(Trail("s2", trail))

    @app.message_pattern("op", middleware=[Trail("r", trail)])
    def op(data: Any) -> str:
        trail.append("handler")
        return "ok"

    async with app, create_client(url, middleware=[Trail("c1", trail)]) as client:
        client.use(Trail("c2", trail))
        assert await client.send("op", 1) == "ok"
    assert trail == ["c1:request", "c2:request", "s1>", "s2>", "r>", "handler", "<r", "<s2", "<s1"]


async def test_no_middleware_keeps_the_plain_path(url: str) -> None:
    app = Microservice(url)

    @app.message_pattern("op")
    def op(data: Any) -> Any:
        return data

    async with app, create_client(url) as client:
        assert await client.send("op", 1) == 1
        assert client._chains is None
    assert all(handler.chain is None for handler in app.handlers)


async def test_a_guard_rejects_requests_and_events_before_the_handler(url: str) -> None:
    ran: list[Any] = []

    class Guard(ServerMiddleware):
        async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
            if message.headers.get("x-role") != "admin":
                raise RpcException({"status": "error", "message": "Forbidden"})
            return await call_next(message)

    app = Microservice(url, middleware=[Guard()], on_failure=FailurePolicy(retries=0))

    @app.message_pattern("op")
    def op(data: Any) -> str:
        ran.append(("op", data))
        return "done"

    @app.event_pattern("happened")
    def happened(data: Any) -> None:
        ran.append(("happened", data))

    async with app, create_client(url) as client:
        with pytest.raises(RpcError) as info:
            await client.send("op", 1)
        assert info.value.error == {"status": "error", "message": "Forbidden"}
        await client.emit("happened", 1)
        assert await client.send("op", 2, headers={"x-role": "admin"}) == "done"
        await client.emit("happened", 2, headers={"x-role": "admin"})
        await asyncio.sleep(0.05)
    assert ran == [("op", 2), ("happened", 2)]


async def test_a_filter_maps_exceptions_and_a_short_circuit_answers(url: str) -> None:
    class Filter(ServerMiddleware):
        async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
            if message.data == "cached":
                return "from cache"
            try:
                return await call_next(message)
            except KeyError as exc:
                raise RpcException({"code": "NOT_FOUND", "key": exc.args[0]}) from exc

    app = Microservice(url, middleware=[Filter()])

    @app.message_pattern("find")
    def find(name: str) -> str:
        raise KeyError(name)

    async with app, create_client(url) as client:
        with pytest.raises(RpcError) as info:
            await client.send("find", "x")
        assert info.value.error == {"code": "NOT_FOUND", "key": "x"}
        assert await client.send("find", "cached") == "from cache"


async def test_server_middleware_replaces_data_before_validation(url: str) -> None:
    class Upper(ServerMiddleware):
        async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
            message.data = int(message.data)
            return await call_next(message)

    app = Microservice(url, middleware=[Upper()])

    @app.message_pattern("double")
    def double(n: int) -> int:
        return n * 2

    async with app, create_client(url) as client:
        assert await client.send("double", "21") == 42


async def test_streaming_handler_through_server_middleware(url: str) -> None:
    results: list[Any] = []

    class Seen(ServerMiddleware):
        async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
            result = await call_next(message)
            results.append(result)
            return result

    app = Microservice(url, middleware=[Seen()])

    @app.message_pattern("count")
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async with app, create_client(url) as client:
        assert [i async for i in client.send("count", 3)] == [0, 1, 2]
        assert await client.send("count", 2) == 1
    assert results == [STREAMED, STREAMED]


async def test_client_middleware_retries_short_circuits_and_wraps_streams(url: str) -> None:
    attempts: list[float | None] = []

    class Retry(ClientMiddleware):
        async def send(self, message: Outgoing, call_next: SendNext) -> Any:
            if message.pattern == "local":
                return "answered locally"
            for _ in range(3):
                attempts.append(message.timeout)
                try:
                    return await call_next(message)
                except RequestTimeout:
                    message.timeout = 1.0
            raise AssertionError("no attempt succeeded")

        async def _doubled(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for item in items:
                yield item * 2

        def stream(self, message: Outgoing, call_next: StreamNext) -> AsyncIterator[Any]:
            return self._doubled(call_next(message))

    app = Microservice(url)
    calls = 0

    @app.message_pattern("flaky")
    async def flaky(data: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.5)
        return "ok"

    @app.message_pattern("count")
    def count(n: int) -> Any:
        yield from range(n)

    async with app, create_client(url, middleware=[Retry()]) as client:
        assert await client.send("flaky", None, timeout=0.05) == "ok"
        assert attempts == [0.05, 1.0]
        assert await client.send("local") == "answered locally"
        assert [i async for i in client.send("count", 3)] == [0, 2, 4]
        assert client.pending_count == 0


async def test_client_middleware_headers_reach_handlers_and_keep_record_options(url: str) -> None:
    seen: list[Any] = []

    class Tenant(ClientMiddleware):
        async def send(self, message: Outgoing, call_next: SendNext) -> Any:
            message.headers["x-tenant"] = "acme"
            return await call_next(message)

        async def emit(self, message: Outgoing, call_next: EmitNext) -> None:
            message.headers["x-tenant"] = "acme"
            message.data = {"wrapped": message.data}
            await call_next(message)

    app = Microservice(url)

    @app.message_pattern("who")
    def who(data: Any, ctx: Context) -> Any:
        return [data, _ours(ctx.headers)]

    @app.event_pattern("told")
    def told(data: Any, ctx: Context) -> None:
        seen.append([data, {k: v for k, v in (ctx.headers or {}).items() if k.startswith("x-")}])

    async with app, create_client(url, middleware=[Tenant()]) as client:
        assert await client.send("who", Record(1, headers={"x-own": "1"}, priority=3)) == [
            1,
            {"x-own": "1", "x-tenant": "acme"},
        ]
        assert await client.send("who", 2) == [2, {"x-tenant": "acme"}]
        await client.emit("told", 3)
        await asyncio.sleep(0.05)
    assert seen == [[{"wrapped": 3}, {"x-tenant": "acme"}]]


async def test_outgoing_and_inbound_describe_the_message(url: str) -> None:
    outgoing: list[Outgoing] = []
    inbound: list[Inbound] = []

    class Look(ClientMiddleware, ServerMiddleware):
        async def send(self, message: Outgoing, call_next: SendNext) -> Any:
            outgoing.append(message)
            return await call_next(message)

        async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
            inbound.append(message)
            return await call_next(message)

    app = Microservice(url, middleware=[Look()])

    @app.message_pattern({"cmd": "sum"})
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    async with app, create_client(url, middleware=[Look()], timeout=5) as client:
        assert await client.send({"cmd": "sum"}, [1, 2]) == 3
    [out] = outgoing
    assert (out.kind, out.route, out.data, out.timeout, out.transport) == (
        "request",
        '{"cmd":"sum"}',
        [1, 2],
        5,
        "memory",
    )
    [inb] = inbound
    assert (inb.kind, inb.route, inb.data, inb.transport, inb.handler.name) == (
        "message",
        '{"cmd":"sum"}',
        [1, 2],
        "memory",
        total.__qualname__,
    )
    assert isinstance(inb.id, str)


def test_middleware_must_be_a_list_of_instances(url: str) -> None:
    with pytest.raises(ConfigError, match="list of ServerMiddleware"):
        Microservice(url, middleware=ServerMiddleware())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ClientMiddleware instances"):
        create_client(url, middleware=[ServerMiddleware()])  # type: ignore[list-item]
    app = Microservice(url)
    with pytest.raises(ConfigError, match="ServerMiddleware instances"):
        app.message_pattern("x", middleware=[object()])(lambda: None)


async def test_use_after_listen_is_refused(url: str) -> None:
    app = Microservice(url)

    @app.message_pattern("x")
    def x() -> None: ...

    async with app:
        with pytest.raises(ConfigError, match="before listen"):
            app.use(ServerMiddleware())
