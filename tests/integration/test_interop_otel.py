"""Tracing across polybus and NestJS: a NestJS side traced by the OpenTelemetry JS SDK with
the kafkajs and amqplib instrumentations (nest/otel.mjs), a polybus side by
:class:`polybus.otel.Tracing`.

Those instrumentations put W3C ``traceparent`` in the message headers and read it back, and
polybus carries its trace context in the same headers on Kafka and RabbitMQ: there the
spans of both sides form one trace, in both directions. NestJS's TCP, Redis, NATS and MQTT
transports have no such instrumentation (nothing reads ``traceparent`` from their packets'
``metadata``): there a traced polybus client is checked not to disturb the NestJS service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import harness  # tests/integration/nest/harness.py
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_interop import SIDES, Side

from polybus import Microservice, RequestTimeout, RpcException, create_client
from polybus.otel import Tracing
from polybus.patterns import to_route
from polybus.testing.brokers import broker_url, require

pytestmark = pytest.mark.interop


class KafkaSide(Side):
    """Kafka: dotted string topics (test_interop_kafka.py)."""

    def patterns(self, prefix: str) -> dict[str, Any]:
        return {name: f"{prefix}.{name}" for name in ("sum", "stream", "fail", "order_placed")}


def _kafka_env(url: str, prefix: str) -> dict[str, str]:
    return {"NEST_BROKERS": urlsplit(url).netloc.rsplit("@", 1)[-1]}


ALL = {**SIDES, "kafka": KafkaSide("KAFKA", lambda p: broker_url("kafka"), _kafka_env)}
JOINED = ("rabbitmq", "kafka")
"""Where a NestJS service's instrumentations carry the trace context."""


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(tracer_provider=provider)


def _side(name: str) -> Side:
    reason = harness.node_available()
    if not reason and not (harness.NEST_DIR / "node_modules" / "@opentelemetry").is_dir():
        reason = f"no OpenTelemetry JS packages: run `npm ci` in {harness.NEST_DIR}"
    if reason:
        require(f"NestJS interop: {reason}")
    return ALL[name]


def _prefix(name: str) -> str:
    prefix = harness.unique_prefix()
    return prefix.rstrip("_") if name == "kafka" else prefix


def _hex(span: ReadableSpan) -> tuple[str, str]:
    """``(trace id, span id)`` as the JS SDK writes them."""
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


async def _first_answer(call: Callable[[], Awaitable[Any]], attempts: int = 12) -> Any:
    """A NestJS Kafka service says READY before its group has partitions, and never reads
    what was produced before then (test_interop_kafka.py): ask until it answers."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except RequestTimeout:
            continue
    return await call()


async def _eventually(probe: Callable[[], bool], timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if probe():
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("name", list(ALL))
async def test_traced_polybus_client_calls_nestjs_server(
    name: str, tmp_path: Path, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    side = _side(name)
    prefix = _prefix(name)
    url = side.url(prefix)
    patterns = side.patterns(prefix)
    spans_file = tmp_path / "nest-spans.jsonl"
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix), **harness.otel_env(spans_file)}
    options = {"group_id": f"pb-{prefix}-client"} if name == "kafka" else {}
    async with (
        harness.start_nest_server(side.nest, env) as nest,
        create_client(url, timeout=30, middleware=[tracing], **options) as client,
    ):
        total = await _first_answer(lambda: client.send(patterns["sum"], [1, 2, 3, 4], timeout=5))
        assert total == ("10" if name == "kafka" else 10)
        await client.emit(patterns["order_placed"], harness.ORDER)
        events = await nest.wait_for_events(1, timeout=30)
    assert events[0]["data"] == harness.ORDER
    ours = {_hex(span): span.name for span in exporter.get_finished_spans()}
    nest_spans = harness.read_spans(spans_file)
    joined = {
        ours[(span["traceId"], span["parentSpanId"])]
        for span in nest_spans
        if span["kind"] == "CONSUMER" and (span["traceId"], span["parentSpanId"]) in ours
    }
    if name in JOINED:
        assert joined == {
            f"send {to_route(patterns['sum'])}",
            f"publish {to_route(patterns['order_placed'])}",
        }, nest_spans
    else:
        assert joined == set()


@pytest.mark.parametrize("name", JOINED)
async def test_traced_nestjs_client_calls_polybus_server(
    name: str, tmp_path: Path, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    side = _side(name)
    prefix = _prefix(name)
    url = side.url(prefix)
    patterns = side.patterns(prefix)
    options = {"group_id": f"pb-{prefix}-server"} if name == "kafka" else {}
    app = Microservice(url, middleware=[tracing], **options)
    received: list[Any] = []

    @app.message_pattern(patterns["sum"])
    def total(numbers: Any) -> float:
        return sum(numbers)

    @app.message_pattern(patterns["stream"])
    async def stream(_: Any) -> AsyncIterator[int]:
        for i in (1, 2, 3):
            yield i

    @app.message_pattern(patterns["fail"])
    def fail(_: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.event_pattern(patterns["order_placed"])
    def placed(data: Any) -> None:
        received.append(data)

    spans_file = tmp_path / "nest-spans.jsonl"
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix), **harness.otel_env(spans_file)}
    async with app:
        result = await harness.run_nest_client(side.nest, env, timeout=90)
        await _eventually(lambda: bool(received))
        await app.transport.delete_resources()  # type: ignore[attr-defined]
    assert result["fail"] == {"code": "E_TEST", "message": "boom"}
    producers = {
        (span["traceId"], span["spanId"])
        for span in harness.read_spans(spans_file)
        if span["kind"] == "PRODUCER"
    }
    joined = {
        span.name
        for span in exporter.get_finished_spans()
        if span.parent is not None
        and (format(span.parent.trace_id, "032x"), format(span.parent.span_id, "016x")) in producers
    }
    assert joined == {
        f"process {to_route(patterns[p])}" for p in ("sum", "stream", "fail", "order_placed")
    }
