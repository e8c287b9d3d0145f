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

from pathlib import Path
from urllib.parse import urlsplit

import harness  # tests/integration/nest/harness.py
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_interop import SIDES, Side
from twin import build_twin, patterns  # tests/integration/nest/twin.py

from polybus import create_client
from polybus.otel import Tracing
from polybus.patterns import to_route
from polybus.testing.brokers import broker_url, require

pytestmark = pytest.mark.interop


def _kafka_env(url: str, prefix: str) -> dict[str, str]:
    return {"NEST_BROKERS": urlsplit(url).netloc.rsplit("@", 1)[-1]}


ALL = {**SIDES, "kafka": Side("KAFKA", lambda p: broker_url("kafka"), _kafka_env)}
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


@pytest.mark.parametrize("name", list(ALL))
async def test_traced_polybus_client_calls_nestjs_server(
    name: str, tmp_path: Path, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    side = _side(name)
    prefix = _prefix(name)
    url = side.url(prefix)
    p = patterns(prefix, kafka=name == "kafka")
    spans_file = tmp_path / "nest-spans.jsonl"
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix), **harness.otel_env(spans_file)}
    options = {"group_id": f"pb-{prefix}-client"} if name == "kafka" else {}
    async with (
        harness.start_nest_server(side.nest, env) as nest,
        create_client(url, timeout=30, middleware=[tracing], **options) as client,
    ):
        total = await harness.first_answer(lambda: client.send(p["sum"], [1, 2, 3, 4], timeout=5))
        assert total == ("10" if name == "kafka" else 10)
        await client.emit(p["order_placed"], harness.ORDER)
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
            f"send {to_route(p['sum'])}",
            f"publish {to_route(p['order_placed'])}",
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
    kafka = name == "kafka"
    p = patterns(prefix, kafka=kafka)
    options = {"group_id": f"pb-{prefix}-server"} if kafka else {}
    spans_file = tmp_path / "nest-spans.jsonl"
    env = {"NEST_PREFIX": prefix, **side.env(url, prefix), **harness.otel_env(spans_file)}
    async with build_twin(url, prefix, kafka=kafka, middleware=[tracing], **options) as service:
        result = await harness.run_nest_client(side.nest, env, timeout=90)
        await service.wait_for_events(1, timeout=15)
        await service.app.transport.delete_resources()  # type: ignore[attr-defined]
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
        f"process {to_route(p[route])}" for route in ("sum", "stream", "fail", "order_placed")
    }
