"""OpenTelemetry tracing as middleware (``pip install polybus[otel]``)::

    from polybus.otel import Tracing

    app = Microservice(url, middleware=[Tracing()])
    client = create_client(url, middleware=[Tracing()])

One :class:`Tracing` serves both sides. A client call gets a span whose W3C trace context
(``traceparent``, ``tracestate``; whatever the propagator writes) goes into the message's
headers; the service extracts it and runs the handler in a child span, current while the
handler runs, so the calls the handler makes join the same trace.

Spans follow the OpenTelemetry messaging semantic conventions (1.3x): names
``send <route>`` (a request or stream), ``publish <route>`` (an event) and
``process <route>``; attributes ``messaging.system`` (the transport's name: ``kafka``,
``rabbitmq``, ``nats`` (JetStream too), ``redis``, ``mqtt``, ``tcp``, ``memory``),
``messaging.destination.name``, ``messaging.operation.type`` (``send``/``process``),
``messaging.operation.name`` and, on the service, ``messaging.message.conversation_id``
(the request id). A failure sets the span's status to ERROR, ``error.type`` to the
exception's qualified name and records an ``exception`` event.

Span kinds are ``PRODUCER`` (client) and ``CONSUMER`` (service), a request's too: the
conventions' table for a send span whose context travels as the message's creation
context, and what the OpenTelemetry JS kafkajs and amqplib instrumentations of a NestJS
service emit, so a trace mixing both reads the same throughout.

The ``opentelemetry-api`` package is needed here only: the rest of polybus never imports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from . import __version__
from .errors import ConfigError
from .middleware import (
    ClientMiddleware,
    EmitNext,
    HandleNext,
    Inbound,
    Outgoing,
    SendNext,
    ServerMiddleware,
    StreamNext,
)
from .packets import MISSING

__all__ = ["Tracing"]

SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
DESTINATION_TEMPLATE = "messaging.destination.template"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
CONVERSATION_ID = "messaging.message.conversation_id"
ERROR_TYPE = "error.type"

SYSTEMS = {"nats-jetstream": "nats"}
"""``messaging.system`` of the transports whose name is not the system's."""


class Tracing(ClientMiddleware, ServerMiddleware):
    """Traces a client's calls and a service's handlers (install it on either or both).

    ``tracer_provider`` and ``propagator`` default to the global ones (looked up at each
    call, so configuring OpenTelemetry after building the middleware works).
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
            raise ConfigError(f"tracer_provider must be a TracerProvider, got {tracer_provider!r}")
        if propagator is not None and not isinstance(propagator, TextMapPropagator):
            raise ConfigError(f"propagator must be a TextMapPropagator, got {propagator!r}")
        self._tracer = trace.get_tracer(
            "polybus", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        self._propagator = propagator

    # -- client --------------------------------------------------------------------------

    async def send(self, message: Outgoing, call_next: SendNext) -> Any:
        with _current(self._client_span(message, "send")) as span:
            self._inject(message, span)
            return await call_next(message)

    async def stream(self, message: Outgoing, call_next: StreamNext) -> AsyncIterator[Any]:
        # Not made current: a context attached in an async generator would be restored in
        # whatever context resumes it. The span still is the parent of the service's.
        span = self._client_span(message, "send")
        try:
            self._inject(message, span)
            replies = call_next(message)
            try:
                async for item in replies:
                    yield item
            finally:  # a caller that stops early closes us; we close what we iterate
                aclose = getattr(replies, "aclose", None)
                if aclose is not None:
                    await aclose()
        except Exception as exc:
            _fail(span, exc)
            raise
        finally:
            span.end()

    async def emit(self, message: Outgoing, call_next: EmitNext) -> None:
        with _current(self._client_span(message, "publish")) as span:
            self._inject(message, span)
            await call_next(message)

    def _client_span(self, message: Outgoing, operation: str) -> Span:
        return self._tracer.start_span(
            f"{operation} {message.route}",
            kind=SpanKind.PRODUCER,
            attributes={
                SYSTEM: _system(message.transport),
                DESTINATION: message.route,
                OPERATION_TYPE: "send",
                OPERATION_NAME: operation,
            },
        )

    def _inject(self, message: Outgoing, span: Span) -> None:
        context = trace.set_span_in_context(span)
        if self._propagator is None:
            propagate.inject(message.headers, context)
        else:
            self._propagator.inject(message.headers, context)

    # -- server --------------------------------------------------------------------------

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        attributes: dict[str, str] = {
            SYSTEM: _system(message.transport),
            DESTINATION: message.route,
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
        }
        actual = message.context.pattern
        if isinstance(actual, str) and actual != message.route:  # a wildcard route
            attributes[DESTINATION] = actual
            attributes[DESTINATION_TEMPLATE] = message.route
        if message.id is not MISSING:
            attributes[CONVERSATION_ID] = str(message.id)
        remote = self._extract(message.headers)
        span = self._tracer.start_span(
            f"process {message.route}", remote, SpanKind.CONSUMER, attributes
        )
        with _current(span, remote):
            return await call_next(message)

    def _extract(self, headers: dict[str, str]) -> OtelContext:
        # Explicitly from an empty context: the remote parent, never whatever is current
        # in the task that runs the handler.
        if self._propagator is None:
            return propagate.extract(headers, OtelContext())
        return self._propagator.extract(headers, OtelContext())


def _system(transport: str) -> str:
    return SYSTEMS.get(transport, transport)


@contextmanager
def _current(span: Span, context: OtelContext | None = None) -> Iterator[Span]:
    """``span`` current (in ``context``) for the block, then ended, with the failure the
    block raised recorded."""
    token = otel_context.attach(trace.set_span_in_context(span, context))
    try:
        yield span
    except Exception as exc:
        _fail(span, exc)
        raise
    finally:
        otel_context.detach(token)
        span.end()


def _fail(span: Span, exc: Exception) -> None:
    kind = type(exc)
    qualified = kind.__qualname__
    if kind.__module__ != "builtins":
        qualified = f"{kind.__module__}.{qualified}"
    span.set_attribute(ERROR_TYPE, qualified)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
    span.record_exception(exc)
