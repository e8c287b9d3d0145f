"""Metrics of a running service on each real broker, scraped over HTTP after traffic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from test_conformance import TRANSPORTS

from polybus import Microservice, RpcError, RpcException, create_client
from polybus.abc import SupportsCleanup
from polybus.config import features_of
from polybus.patterns import to_route
from polybus.prometheus import PrometheusMiddleware

OK, REFUSED, CRASHED, EVENTS, STREAMED_ITEMS = 5, 3, 2, 4, 3


@pytest.fixture(params=list(TRANSPORTS))
def url(request: pytest.FixtureRequest) -> str:
    return TRANSPORTS[request.param]()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/metrics")
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


async def test_metrics_scraped_over_http_count_every_message(url: str) -> None:
    features = features_of(url)
    token = uuid.uuid4().hex[:12]
    prefix = f"pbm{token}_"
    option = features.isolation_option
    isolation = {option: f"polybus-prom-{token}"} if option else {}
    registry = CollectorRegistry()
    metrics = PrometheusMiddleware(registry=registry, app_name="orders")
    ok: Any = {"cmd": f"{prefix}sum"} if features.object_patterns else f"{prefix}sum"
    refuse, crash, items, placed = (f"{prefix}{n}" for n in ("refuse", "crash", "items", "placed"))
    app = Microservice(url, middleware=[metrics], **isolation)
    seen: list[Any] = []
    all_seen = asyncio.Event()

    @app.message_pattern(ok)
    async def total(data: list[int]) -> int:
        return sum(data)

    @app.message_pattern(refuse)
    async def refused(data: Any) -> None:
        raise RpcException({"status": "error", "message": "refused"})

    @app.message_pattern(crash)
    async def crashed(data: Any) -> None:
        raise KeyError("boom")

    @app.message_pattern(items)
    async def stream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @app.event_pattern(placed)
    async def on_placed(data: Any) -> None:
        seen.append(data)
        if len(seen) == EVENTS:
            all_seen.set()

    await app.listen()
    port = getattr(app.transport, "port", None)
    client_url = f"tcp://127.0.0.1:{port}" if url.startswith("tcp:") else url
    client = create_client(client_url, middleware=[metrics], **isolation)
    http, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        for i in range(OK):
            assert await client.send(ok, [i, 1]) == i + 1
        for _ in range(REFUSED):
            with pytest.raises(RpcError, match="refused"):
                await client.send(refuse, None)
        for _ in range(CRASHED):
            with pytest.raises(RpcError, match="Internal server error"):
                await client.send(crash, None)
        assert [i async for i in client.send(items, STREAMED_ITEMS)] == [0, 1, 2]
        for i in range(EVENTS):
            await client.emit(placed, {"order": i})
        await asyncio.wait_for(all_seen.wait(), 30)
        got = await scrape(http.server_port)
    finally:
        http.shutdown()
        thread.join()
        await client.close()
        await app.close()
        if isinstance(app.transport, SupportsCleanup):
            await app.transport.delete_resources()

    broker = features.name

    def sample(name: str, **labels: str) -> float:
        key = frozenset({"app_name": "orders", "broker": broker, **labels}.items())
        return got.get((f"polybus_{name}", key), 0.0)

    handled = {to_route(ok): OK, refuse: REFUSED, crash: CRASHED, items: 1, placed: EVENTS}
    for route, count in handled.items():
        assert sample("received_messages_total", handler=route) == count, route
        assert sample("received_messages_in_process", handler=route) == 0, route
        assert sample("received_processed_messages_duration_seconds_count", handler=route) == count
        failed = count if route in (refuse, crash) else 0
        assert sample("received_processed_messages_total", handler=route, status="acked") == (
            count - failed
        )
        assert sample("received_processed_messages_total", handler=route, status="error") == failed
        assert sample("published_messages_total", destination=route, status="success") == (
            count - failed
        )
        assert sample("published_messages_total", destination=route, status="error") == failed
        assert sample("published_messages_duration_seconds_count", destination=route) == count
    exceptions = "received_processed_messages_exceptions_total"
    assert sample(exceptions, handler=refuse, exception_type="RpcException") == REFUSED
    assert sample(exceptions, handler=crash, exception_type="KeyError") == CRASHED
    published_exceptions = "published_messages_exceptions_total"
    for route, count in ((refuse, REFUSED), (crash, CRASHED)):
        assert sample(published_exceptions, destination=route, exception_type="RpcError") == count
    # nothing else was counted: every series with a non-zero count is one of the above
    counted = {
        dict(labels).get("handler") or dict(labels).get("destination")
        for (name, labels), v in got.items()
        if name.startswith("polybus_") and name.endswith(("_total", "_count")) and v
    }
    assert counted == set(handled)
