"""Middleware sets the floor bench measures: ``python -m bench --floor --middleware noop``.

Each entry builds a fresh list of middleware objects usable on both sides (each object is
given to the service and to the client); the bench measures every set against none, in
the same session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from polybus import ClientMiddleware, ServerMiddleware


class PassThrough(ClientMiddleware, ServerMiddleware):
    """Does nothing: the cost of the middleware machinery itself."""


def prometheus() -> list[Any]:
    """polybus.prometheus (the ``[prometheus]`` extra), counting into a registry of its own."""
    from prometheus_client import CollectorRegistry

    from polybus.prometheus import PrometheusMiddleware

    return [PrometheusMiddleware(registry=CollectorRegistry())]


def otel() -> list[Any]:
    """polybus.otel (the ``[otel]`` extra) on an SDK TracerProvider of its own that records
    every span (the default sampler) and exports it to nowhere: the cost of making, filling
    and ending spans and of the trace context in the headers, not of shipping spans. The
    server's frames carry no ``traceparent``: its spans start traces of their own."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from polybus.otel import Tracing

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Dropping()))
    return [Tracing(tracer_provider=provider)]


SETS: dict[str, Callable[[], list[Any]]] = {
    "noop": lambda: [PassThrough()],
    "prometheus": prometheus,
    "otel": otel,
}
