"""polybus.otel driven directly (each middleware method with its own ``call_next``): spans,
their kinds, names and attributes, the trace context in the headers, and failures."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from polybus import ConfigError, RpcError, RpcException
from polybus.abc import Context
from polybus.eager import start_eagerly
from polybus.handlers import Handler, HandlerMark
from polybus.middleware import STREAMED, ClientMiddleware, Inbound, Outgoing, ServerMiddleware
from polybus.otel import Tracing
from polybus.packets import MISSING


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def tracing(provider: TracerProvider) -> Tracing:
    return Tracing(tracer_provider=provider)


def outgoing(kind: Literal["request", "stream", "event"], route: str = "orders") -> Outgoing:
    return Outgoing(kind, route, route, {"n": 1}, {}, None if kind == "event" else 5.0, "kafka")


def inbound(
    headers: dict[str, str],
    route: str = "orders",
    kind: Literal["message", "event"] = "message",
    pattern: Any = None,
) -> Inbound:
    context = Context(
        route if pattern is None else pattern,
        {"n": 1},
        "42" if kind == "message" else MISSING,
        headers,
    )
    handler = Handler(lambda data: data, HandlerMark(route, kind))
    return Inbound(context, kind, route, handler, "rabbitmq", {"n": 1})


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_one_object_is_both_kinds_of_middleware(tracing: Tracing) -> None:
    assert isinstance(tracing, ClientMiddleware)
    assert isinstance(tracing, ServerMiddleware)


async def test_send_span_and_the_context_it_injects(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    message = outgoing("request")
    seen: dict[str, str] = {}

    async def call_next(m: Outgoing) -> str:
        seen.update(m.headers)
        return "reply"

    assert await tracing.send(message, call_next) == "reply"
    span = only(exporter)
    assert span.name == "send orders"
    assert span.kind is SpanKind.PRODUCER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.destination.name": "orders",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    assert span.context is not None
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")
    assert seen["traceparent"].startswith(f"00-{trace_id}-{span_id}-")


async def test_send_is_a_child_of_the_current_span(
    tracing: Tracing, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def call_next(m: Outgoing) -> None:
        return None

    with provider.get_tracer("test").start_as_current_span("outer") as outer:
        await tracing.send(outgoing("request"), call_next)
    send, _ = exporter.get_finished_spans()
    assert send.parent is not None
    assert send.parent.span_id == outer.get_span_context().span_id


async def test_emit_is_a_producer_span_named_publish(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    message = outgoing("event")

    async def call_next(m: Outgoing) -> None:
        assert "traceparent" in m.headers

    await tracing.emit(message, call_next)
    span = only(exporter)
    assert span.name == "publish orders"
    assert span.kind is SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["messaging.operation.type"] == "send"
    assert span.attributes["messaging.operation.name"] == "publish"


async def test_stream_span_covers_the_iteration(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def replies(m: Outgoing) -> AsyncIterator[int]:
        assert "traceparent" in m.headers
        for i in range(3):
            yield i

    stream = tracing.stream(outgoing("stream"), replies)
    items = [await stream.__anext__(), await stream.__anext__()]
    assert exporter.get_finished_spans() == ()  # still iterating
    items += [item async for item in stream]
    assert items == [0, 1, 2]
    span = only(exporter)
    assert span.name == "send orders"
    assert span.kind is SpanKind.PRODUCER


async def test_a_stream_closed_early_ends_its_span_and_closes_the_inner_one(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    closed = []

    async def replies(m: Outgoing) -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            closed.append(True)

    stream = tracing.stream(outgoing("stream"), replies)
    assert await stream.__anext__() == 0
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
    assert only(exporter).status.status_code is StatusCode.UNSET


async def test_client_failure_is_recorded(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    async def call_next(m: Outgoing) -> None:
        raise RpcError({"status": "error", "message": "no stock"})

    with pytest.raises(RpcError):
        await tracing.send(outgoing("request"), call_next)
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "no stock"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "polybus.errors.RpcError"
    assert [event.name for event in span.events] == ["exception"]


async def test_stream_failure_is_recorded(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    async def replies(m: Outgoing) -> AsyncIterator[int]:
        yield 1
        raise TimeoutError("late")

    with pytest.raises(TimeoutError):
        async for _ in tracing.stream(outgoing("stream"), replies):
            pass
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "TimeoutError"


async def test_handle_continues_the_remote_trace_and_is_current(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    remote = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    current: list[trace.SpanContext] = []

    async def call_next(m: Inbound) -> str:
        current.append(trace.get_current_span().get_span_context())
        return "done"

    assert await tracing.handle(inbound({"traceparent": remote}), call_next) == "done"
    span = only(exporter)
    assert span.name == "process orders"
    assert span.kind is SpanKind.CONSUMER
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.parent.is_remote
    assert current == [span.context]
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "orders",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.conversation_id": "42",
    }


async def test_handle_ignores_the_span_current_where_it_runs(
    tracing: Tracing, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def call_next(m: Inbound) -> None:
        return None

    with provider.get_tracer("test").start_as_current_span("unrelated"):
        await tracing.handle(inbound({}), call_next)
    process, unrelated = exporter.get_finished_spans()
    assert process.parent is None
    assert process.context is not None and unrelated.context is not None
    assert process.context.trace_id != unrelated.context.trace_id


async def test_an_event_has_no_conversation_id(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def call_next(m: Inbound) -> None:
        return None

    await tracing.handle(inbound({}, kind="event"), call_next)
    span = only(exporter)
    assert span.kind is SpanKind.CONSUMER
    assert span.attributes is not None
    assert "messaging.message.conversation_id" not in span.attributes


async def test_a_wildcard_route_is_the_template(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def call_next(m: Inbound) -> object:
        return STREAMED

    assert (
        await tracing.handle(inbound({}, "sensors/+", pattern="sensors/7"), call_next) is STREAMED
    )
    span = only(exporter)
    assert span.name == "process sensors/+"
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == "sensors/7"
    assert span.attributes["messaging.destination.template"] == "sensors/+"


async def test_handler_failure_is_recorded(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def call_next(m: Inbound) -> None:
        raise RpcException("bad order")

    with pytest.raises(RpcException):
        await tracing.handle(inbound({}), call_next)
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "polybus.errors.RpcException"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "polybus.errors.RpcException"


async def test_a_handler_that_suspends_after_an_eager_start(
    tracing: Tracing, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """The server starts handling eagerly; on Python < 3.12 what suspends goes on in a Task,
    in a copy of the context it began in: the span must still be current after the
    suspension and be gone once the handler is over, without a "Failed to detach"."""
    seen = []

    async def call_next(m: Inbound) -> None:
        await asyncio.sleep(0)
        seen.append(trace.get_current_span())

    async def handling() -> None:
        await tracing.handle(inbound({}), call_next)
        seen.append(trace.get_current_span())

    task = start_eagerly(asyncio.get_running_loop(), handling())
    assert task is not None
    await task
    span = only(exporter)
    assert [s.get_span_context() for s in seen] == [span.context, INVALID_SPAN_CONTEXT]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_given_propagator_is_used(provider: TracerProvider) -> None:
    class Marking(TraceContextTextMapPropagator):
        def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
            carrier["x-marked"] = "1"

    message = outgoing("request")

    async def call_next(m: Outgoing) -> None:
        return None

    await Tracing(tracer_provider=provider, propagator=Marking()).send(message, call_next)
    assert message.headers == {"x-marked": "1"}


def test_bad_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tracer_provider"):
        Tracing(tracer_provider="global")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="propagator"):
        Tracing(propagator={"traceparent": "x"})  # type: ignore[arg-type]


def test_importing_polybus_does_not_load_opentelemetry() -> None:
    code = (
        "import sys, polybus, polybus.middleware, polybus.cli\n"
        "loaded = {'opentelemetry', 'polybus.otel'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
