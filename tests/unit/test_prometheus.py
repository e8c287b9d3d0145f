"""polybus.prometheus: the middleware's methods driven directly, a private registry each."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, make_asgi_app

from polybus import ConfigError, Context, FailurePolicy, Microservice, RpcException, create_client
from polybus.handlers import Handler, HandlerMark
from polybus.middleware import STREAMED, Inbound, Outgoing
from polybus.prometheus import PrometheusMiddleware

RECEIVED = "polybus_received_messages_total"
IN_PROCESS = "polybus_received_messages_in_process"
PROCESSED = "polybus_received_processed_messages_total"
DURATION = "polybus_received_processed_messages_duration_seconds"
EXCEPTIONS = "polybus_received_processed_messages_exceptions_total"
PUBLISHED = "polybus_published_messages_total"
PUBLISHED_DURATION = "polybus_published_messages_duration_seconds"
PUBLISHED_EXCEPTIONS = "polybus_published_messages_exceptions_total"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist."""
    got = registry.get_sample_value(name, {"app_name": "svc", "broker": "memory", **labels})
    return 0.0 if got is None else got


def inbound(route: str = "sum", kind: Literal["message", "event"] = "message") -> Inbound:
    async def handler(data: Any) -> Any:
        return data

    return Inbound(
        context=Context(route, 1),
        kind=kind,
        route=route,
        handler=Handler(handler, HandlerMark(route, kind)),
        transport="memory",
        data=1,
    )


def outgoing(
    route: str = "sum", kind: Literal["request", "stream", "event"] = "request"
) -> Outgoing:
    return Outgoing(kind, route, route, 1, {}, None if kind == "event" else 5.0, "memory")


# -- server side ----------------------------------------------------------------------------


async def test_a_handled_message_is_received_acked_timed_and_leaves_the_gauge(
    registry: CollectorRegistry,
) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    seen: list[float] = []

    async def call_next(message: Inbound) -> Any:
        seen.append(value(registry, IN_PROCESS, handler="sum"))
        return message.data + 1

    assert await mw.handle(inbound(), call_next) == 2
    assert await mw.handle(inbound(), call_next) == 2
    assert seen == [1.0, 1.0]
    assert value(registry, RECEIVED, handler="sum") == 2
    assert value(registry, PROCESSED, handler="sum", status="acked") == 2
    assert value(registry, PROCESSED, handler="sum", status="error") == 0
    assert value(registry, IN_PROCESS, handler="sum") == 0
    assert value(registry, DURATION + "_count", handler="sum") == 2
    assert value(registry, DURATION + "_bucket", handler="sum", le="+Inf") == 2


async def test_a_streaming_handler_counts_as_acked(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")

    async def call_next(message: Inbound) -> Any:
        return STREAMED

    assert await mw.handle(inbound("gen"), call_next) is STREAMED
    assert value(registry, PROCESSED, handler="gen", status="acked") == 1


async def test_failures_count_as_error_by_exception_type(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    errors = [RpcException("no"), ValueError("bad"), RpcException({"status": "error"})]

    for error in errors:

        async def call_next(message: Inbound, error: Exception = error) -> Any:
            raise error

        with pytest.raises(type(error)) as info:
            await mw.handle(inbound("ev", "event"), call_next)
        assert info.value is error

    assert value(registry, RECEIVED, handler="ev") == 3
    assert value(registry, PROCESSED, handler="ev", status="error") == 3
    assert value(registry, PROCESSED, handler="ev", status="acked") == 0
    assert value(registry, EXCEPTIONS, handler="ev", exception_type="RpcException") == 2
    assert value(registry, EXCEPTIONS, handler="ev", exception_type="ValueError") == 1
    assert value(registry, IN_PROCESS, handler="ev") == 0
    assert value(registry, DURATION + "_count", handler="ev") == 3


async def test_a_cancelled_handler_is_received_but_not_processed(
    registry: CollectorRegistry,
) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    started = asyncio.Event()

    async def call_next(message: Inbound) -> Any:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(mw.handle(inbound(), call_next))
    await started.wait()
    assert value(registry, IN_PROCESS, handler="sum") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(registry, RECEIVED, handler="sum") == 1
    assert value(registry, IN_PROCESS, handler="sum") == 0
    assert value(registry, PROCESSED, handler="sum", status="acked") == 0
    assert value(registry, PROCESSED, handler="sum", status="error") == 0
    assert value(registry, DURATION + "_count", handler="sum") == 0


async def test_series_are_per_route_and_transport(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")

    async def call_next(message: Inbound) -> Any:
        return None

    other = inbound("b")
    other.transport = "redis"
    await mw.handle(inbound("a"), call_next)
    await mw.handle(other, call_next)
    await mw.handle(other, call_next)
    assert value(registry, RECEIVED, handler="a") == 1
    assert value(registry, RECEIVED, handler="b") == 0
    assert value(registry, RECEIVED, handler="b", broker="redis") == 2


# -- client side ----------------------------------------------------------------------------


async def test_send_and_emit_count_success_and_error(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")

    async def reply(message: Outgoing) -> Any:
        return 6

    async def fail(message: Outgoing) -> Any:
        raise TimeoutError("late")

    async def accepted(message: Outgoing) -> None:
        return None

    assert await mw.send(outgoing(), reply) == 6
    with pytest.raises(TimeoutError):
        await mw.send(outgoing(), fail)
    await mw.emit(outgoing("placed", "event"), accepted)
    with pytest.raises(TimeoutError):
        await mw.emit(outgoing("placed", "event"), fail)

    for route in ("sum", "placed"):
        assert value(registry, PUBLISHED, destination=route, status="success") == 1
        assert value(registry, PUBLISHED, destination=route, status="error") == 1
        assert value(registry, PUBLISHED_DURATION + "_count", destination=route) == 2
        assert (
            value(registry, PUBLISHED_EXCEPTIONS, destination=route, exception_type="TimeoutError")
            == 1
        )
    assert value(registry, RECEIVED, handler="sum") == 0  # the client side receives nothing


def streaming(items: list[Any], error: Exception | None = None) -> Any:
    async def call_next(message: Outgoing) -> AsyncIterator[Any]:
        for item in items:
            yield item
        if error is not None:
            raise error

    return call_next


async def test_a_stream_counts_once_at_its_end(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    stream = mw.stream(outgoing("gen", "stream"), streaming([1, 2, 3]))
    assert [item async for item in stream] == [1, 2, 3]
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()  # asked again after the end: counted once
    assert value(registry, PUBLISHED, destination="gen", status="success") == 1
    assert value(registry, PUBLISHED_DURATION + "_count", destination="gen") == 1


async def test_a_failing_stream_counts_as_error(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    got = []
    with pytest.raises(RpcException):
        async for item in mw.stream(outgoing("gen", "stream"), streaming([1], RpcException("x"))):
            got.append(item)
    assert got == [1]
    assert value(registry, PUBLISHED, destination="gen", status="error") == 1
    assert (
        value(registry, PUBLISHED_EXCEPTIONS, destination="gen", exception_type="RpcException") == 1
    )


async def test_a_closed_stream_counts_as_success_and_closes_the_inner_one(
    registry: CollectorRegistry,
) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    closed = []

    async def call_next(message: Outgoing) -> AsyncIterator[Any]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    never_read = mw.stream(outgoing("gen", "stream"), call_next)
    await never_read.aclose()  # type: ignore[attr-defined]
    with pytest.raises(StopAsyncIteration):  # the inner one is closed
        await never_read.__anext__()
    assert value(registry, PUBLISHED_DURATION + "_count", destination="gen") == 0

    stream = mw.stream(outgoing("gen", "stream"), call_next)
    assert await stream.__anext__() == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
    assert value(registry, PUBLISHED, destination="gen", status="success") == 1
    assert value(registry, PUBLISHED_DURATION + "_count", destination="gen") == 1


# -- in a service and a client (the in-memory transport) -----------------------------------


async def test_each_handler_call_counts_retries_and_fan_out_included(
    registry: CollectorRegistry,
) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    app = Microservice(url, middleware=[mw], on_failure=FailurePolicy(retries=2, backoff=0))
    calls: list[str] = []
    done = asyncio.Event()

    @app.event_pattern("placed")
    async def flaky(data: Any) -> None:
        calls.append("flaky")
        if calls.count("flaky") < 3:
            raise ConnectionError("not yet")
        done.set()

    @app.event_pattern("placed")
    async def steady(data: Any) -> None:
        calls.append("steady")

    async with app, create_client(url, middleware=[mw]) as client:
        await client.emit("placed", 1)
        await asyncio.wait_for(done.wait(), 5)

    assert calls.count("steady") == 1  # a retry runs the failed handlers only
    assert value(registry, RECEIVED, handler="placed") == 4  # steady, flaky three times
    assert value(registry, PROCESSED, handler="placed", status="acked") == 2
    assert value(registry, PROCESSED, handler="placed", status="error") == 2
    assert value(registry, EXCEPTIONS, handler="placed", exception_type="ConnectionError") == 2
    assert value(registry, PUBLISHED, destination="placed", status="success") == 1


async def test_a_route_s_own_middleware_counts_that_route_only(
    registry: CollectorRegistry,
) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    mw = PrometheusMiddleware(registry=registry, app_name="svc")
    app = Microservice(url)

    @app.message_pattern({"cmd": "sum"}, middleware=[mw])
    def total(data: list[int]) -> int:
        return sum(data)

    @app.message_pattern("other")
    def other(data: Any) -> Any:
        return data

    async with app, create_client(url) as client:
        assert await client.send({"cmd": "sum"}, [1, 2]) == 3
        assert await client.send("other", 1) == 1

    assert value(registry, PROCESSED, handler='{"cmd":"sum"}', status="acked") == 1
    assert value(registry, RECEIVED, handler="other") == 0
    assert value(registry, PUBLISHED, destination='{"cmd":"sum"}', status="success") == 0


def test_histogram_buckets_are_cumulative_and_bounds_inclusive(
    registry: CollectorRegistry,
) -> None:
    mw = PrometheusMiddleware(registry=registry, app_name="svc", duration_buckets=(0.1, 0.01))
    series = mw._metrics.received_series(("svc", "memory", "sum"))
    for seconds in (0.001, 0.01, 0.05, 3.0):  # 0.01 falls in le="0.01"
        series.observe(seconds)
    buckets = {
        le: value(registry, DURATION + "_bucket", handler="sum", le=le)
        for le in ("0.01", "0.1", "+Inf")
    }
    assert buckets == {"0.01": 2, "0.1": 3, "+Inf": 4}
    assert value(registry, DURATION + "_count", handler="sum") == 4
    assert value(registry, DURATION + "_sum", handler="sum") == pytest.approx(3.061)


async def test_a_fastapi_app_serves_them_where_make_asgi_app_is_mounted(
    registry: CollectorRegistry,
) -> None:
    from fastapi import FastAPI

    mw = PrometheusMiddleware(registry=registry, app_name="svc")

    async def call_next(message: Inbound) -> Any:
        return None

    await mw.handle(inbound(), call_next)
    http_app = FastAPI()
    http_app.mount("/metrics", make_asgi_app(registry))  # the README's line
    transport = httpx.ASGITransport(app=http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
        answer = await http.get("/metrics", follow_redirects=True)  # as Prometheus does
    assert answer.status_code == 200
    line = 'polybus_received_messages_total{app_name="svc",broker="memory",handler="sum"} 1.0'
    assert line in answer.text.splitlines()


# -- configuration --------------------------------------------------------------------------


async def test_faststream_prefix_and_default_app_name(registry: CollectorRegistry) -> None:
    mw = PrometheusMiddleware(registry=registry, metrics_prefix="faststream")
    assert mw.app_name == "faststream"

    async def call_next(message: Inbound) -> Any:
        return None

    await mw.handle(inbound(), call_next)
    labels = {"app_name": "faststream", "broker": "memory", "handler": "sum"}
    assert registry.get_sample_value("faststream_received_messages_total", labels) == 1
    assert registry.get_sample_value(RECEIVED, {**labels, "app_name": "polybus"}) is None


async def test_middlewares_share_a_registry(registry: CollectorRegistry) -> None:
    server = PrometheusMiddleware(registry=registry, app_name="svc")
    client = PrometheusMiddleware(registry=registry, app_name="svc")
    other = PrometheusMiddleware(registry=registry, app_name="other")

    async def call_next(message: Inbound) -> Any:
        return None

    for mw in (server, client, other):
        await mw.handle(inbound(), call_next)
    assert value(registry, RECEIVED, handler="sum") == 2
    assert value(registry, RECEIVED, handler="sum", app_name="other") == 1


def test_the_global_registry_is_the_default() -> None:
    prefix = f"t{uuid.uuid4().hex}"
    mw = PrometheusMiddleware(metrics_prefix=prefix)
    try:
        assert f"{prefix}_received_messages" in {m.name for m in REGISTRY.collect()}
    finally:
        REGISTRY.unregister(mw._metrics)


def test_bad_configuration_is_a_config_error(registry: CollectorRegistry) -> None:
    with pytest.raises(ConfigError, match="CollectorRegistry"):
        PrometheusMiddleware(registry="default")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="metrics_prefix"):
        PrometheusMiddleware(registry=registry, metrics_prefix="")
    foreign = Counter("taken_published_messages_total", "someone else's", registry=registry)
    with pytest.raises(ConfigError, match="cannot register"):
        PrometheusMiddleware(registry=registry, metrics_prefix="taken")
    registry.unregister(foreign)  # nothing of the failed attempt was left registered:
    PrometheusMiddleware(registry=registry, metrics_prefix="taken")
    with pytest.raises(ConfigError, match="app_name"):
        PrometheusMiddleware(registry=registry, app_name=3)  # type: ignore[arg-type]
    for buckets in ([0.1, "1"], [float("nan")], "0.1", 0.1, []):
        with pytest.raises(ConfigError, match="duration_buckets"):
            PrometheusMiddleware(registry=registry, duration_buckets=buckets)  # type: ignore[arg-type]
    PrometheusMiddleware(registry=registry, duration_buckets=(0.001, 0.01))
    with pytest.raises(ConfigError, match="buckets"):
        PrometheusMiddleware(registry=registry, duration_buckets=(0.5,))


def test_importing_polybus_does_not_load_prometheus_client() -> None:
    code = (
        "import sys, polybus, polybus.middleware, polybus.cli\n"
        "loaded = {'prometheus_client', 'polybus.prometheus'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
