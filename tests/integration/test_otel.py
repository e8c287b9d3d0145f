"""Tracing across services on every transport of the conformance suite: a client calls
service A, whose handler calls service B; the spans (in an in-memory exporter of a local
TracerProvider, never the global one) form one trace with the right parents, kinds and
messaging attributes. Also an event relayed the same way, and a failure along the chain."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from test_conformance import TRANSPORTS

from polybus import ClientProxy, Microservice, RpcError, RpcException, create_client
from polybus.config import features_of
from polybus.otel import Tracing

IN_PROCESS = ("memory", "loopback")

SYSTEMS = {"nats-jetstream": "nats"}
"""``messaging.system`` where it is not the parameter's name."""


@dataclass
class Chain:
    """Services A and B, a client of A (the test's) and of B (A's handlers')."""

    client: ClientProxy
    exporter: InMemorySpanExporter
    prefix: str
    relayed: asyncio.Event

    async def finished(self, count: int) -> tuple[ReadableSpan, ...]:
        """The ``count`` spans, once all have ended (an event's handlers run after its
        ``emit()`` returned)."""
        for _ in range(400):
            finished = self.exporter.get_finished_spans()
            if len(finished) >= count:
                break
            await asyncio.sleep(0.025)
        assert len(finished) == count, [s.name for s in finished]
        return finished

    async def spans(self, count: int) -> dict[str, ReadableSpan]:
        """The ``count`` spans by ``"<kind> <name>"`` (each a different one)."""
        by_key = {f"{s.kind.name} {s.name}": s for s in await self.finished(count)}
        assert len(by_key) == count, sorted(by_key)
        return by_key


@pytest.fixture(params=list(TRANSPORTS))
def transport_url(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param, TRANSPORTS[request.param]()


@pytest.fixture
async def chain(
    transport_url: tuple[str, str], prefix: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Chain]:
    _, url = transport_url
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    option = features_of(url).isolation_option
    relayed = asyncio.Event()

    def isolated(service: str) -> dict[str, Any]:
        return {option: f"{prefix}-{service}"} if option else {}

    async with AsyncExitStack() as stack:
        b_url = _listen_url(url, f"{prefix}b")
        b = Microservice(b_url, middleware=[tracing], **isolated("b"))

        @b.message_pattern(f"{prefix}.b")
        async def increment(n: int) -> int:
            return n + 1

        @b.message_pattern(f"{prefix}.b-fail")
        async def refuse(n: int) -> int:
            raise RpcException({"status": "error", "message": "refused"})

        @b.event_pattern(f"{prefix}.b-event")
        async def arrived(data: Any) -> None:
            relayed.set()

        await b.listen()
        stack.push_async_callback(b.close)
        to_b = create_client(_client_url(b_url, b), middleware=[tracing], **isolated("b"))
        stack.push_async_callback(to_b.close)

        a_url = _listen_url(url, f"{prefix}a")
        a = Microservice(a_url, middleware=[tracing], **isolated("a"))

        @a.message_pattern(f"{prefix}.a")
        async def relay(n: int) -> int:
            return int(await to_b.send(f"{prefix}.b", n))

        @a.message_pattern(f"{prefix}.a-fail")
        async def relay_failing(n: int) -> int:
            return int(await to_b.send(f"{prefix}.b-fail", n))

        @a.message_pattern(f"{prefix}.a-stream")
        async def relay_each(n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield int(await to_b.send(f"{prefix}.b", i))

        @a.event_pattern(f"{prefix}.a-event")
        async def relay_event(data: Any) -> None:
            await to_b.emit(f"{prefix}.b-event", data)

        await a.listen()
        stack.push_async_callback(a.close)
        to_a = create_client(_client_url(a_url, a), middleware=[tracing], **isolated("a"))
        stack.push_async_callback(to_a.close)
        yield Chain(to_a, exporter, prefix, relayed)
    # e.g. OpenTelemetry's "Failed to detach context"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


def _listen_url(url: str, name: str) -> str:
    """Where a service listens: TCP on a free port; an in-process transport under its own
    name (there, services of one name compete for every request)."""
    parts = urlsplit(url)
    if parts.scheme in ("tcp", "tcps"):
        return _with_port(url, 0)
    if parts.scheme in IN_PROCESS:
        return urlunsplit(parts._replace(netloc=name))
    return url


def _client_url(url: str, app: Microservice) -> str:
    """``url``, the service's listen URL, with the port it got on TCP."""
    port = getattr(app.transport, "port", None)
    return _with_port(url, port) if isinstance(port, int) else url


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def check_links(spans: list[ReadableSpan]) -> None:
    """One trace, each span the child of the one before it."""
    root = spans[0]
    assert root.parent is None
    for parent, child in itertools.pairwise(spans):
        assert child.context is not None and parent.context is not None
        assert child.context.trace_id == root.context.trace_id  # type: ignore[union-attr]
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id, (parent.name, child.name)


def check_attributes(
    span: ReadableSpan, system: str, route: str, operation: str, name: str
) -> None:
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == system
    assert attributes["messaging.destination.name"] == route
    assert attributes["messaging.operation.type"] == operation
    assert attributes["messaging.operation.name"] == name


async def test_request_through_two_services_is_one_trace(
    chain: Chain, transport_url: tuple[str, str]
) -> None:
    system = SYSTEMS.get(transport_url[0], transport_url[0])
    p = chain.prefix
    assert await chain.client.send(f"{p}.a", 1, timeout=30) == 2
    spans = await chain.spans(4)
    ordered = [
        spans[f"PRODUCER send {p}.a"],
        spans[f"CONSUMER process {p}.a"],
        spans[f"PRODUCER send {p}.b"],
        spans[f"CONSUMER process {p}.b"],
    ]
    check_links(ordered)
    check_attributes(ordered[0], system, f"{p}.a", "send", "send")
    check_attributes(ordered[1], system, f"{p}.a", "process", "process")
    check_attributes(ordered[2], system, f"{p}.b", "send", "send")
    check_attributes(ordered[3], system, f"{p}.b", "process", "process")
    for span in ordered[1::2]:
        assert span.parent is not None and span.parent.is_remote
        assert (span.attributes or {})["messaging.message.conversation_id"]
    assert all(s.status.status_code is StatusCode.UNSET for s in ordered)


async def test_stream_through_two_services_is_one_trace(chain: Chain) -> None:
    p = chain.prefix
    assert [n async for n in chain.client.send(f"{p}.a-stream", 2, timeout=30)] == [1, 2]
    spans = await chain.finished(6)
    (client,) = [s for s in spans if s.name == f"send {p}.a-stream"]
    (a,) = [s for s in spans if s.name == f"process {p}.a-stream"]
    to_b = [s for s in spans if s.name == f"send {p}.b"]
    b = [s for s in spans if s.name == f"process {p}.b"]
    assert len(to_b) == len(b) == 2
    for call, handled in zip(to_b, sorted(b, key=lambda s: s.start_time or 0), strict=True):
        check_links([client, a, call, handled])
    assert client.end_time is not None and a.end_time is not None
    assert client.end_time >= a.end_time  # the client's span covers the whole iteration


async def test_event_through_two_services_is_one_trace(
    chain: Chain, transport_url: tuple[str, str]
) -> None:
    system = SYSTEMS.get(transport_url[0], transport_url[0])
    p = chain.prefix
    await chain.client.emit(f"{p}.a-event", {"order": 7})
    await asyncio.wait_for(chain.relayed.wait(), 30)
    spans = await chain.spans(4)
    ordered = [
        spans[f"PRODUCER publish {p}.a-event"],
        spans[f"CONSUMER process {p}.a-event"],
        spans[f"PRODUCER publish {p}.b-event"],
        spans[f"CONSUMER process {p}.b-event"],
    ]
    check_links(ordered)
    check_attributes(ordered[0], system, f"{p}.a-event", "send", "publish")
    check_attributes(ordered[3], system, f"{p}.b-event", "process", "process")
    assert "messaging.message.conversation_id" not in (ordered[1].attributes or {})


async def test_a_failure_down_the_chain_marks_every_span(chain: Chain) -> None:
    p = chain.prefix
    with pytest.raises(RpcError):
        await chain.client.send(f"{p}.a-fail", 1, timeout=30)
    spans = await chain.spans(4)
    ordered = [
        spans[f"PRODUCER send {p}.a-fail"],
        spans[f"CONSUMER process {p}.a-fail"],
        spans[f"PRODUCER send {p}.b-fail"],
        spans[f"CONSUMER process {p}.b-fail"],
    ]
    check_links(ordered)
    assert all(s.status.status_code is StatusCode.ERROR for s in ordered)
    errors = [(s.attributes or {})["error.type"] for s in ordered]
    assert errors == ["polybus.errors.RpcError"] * 3 + ["polybus.errors.RpcException"]
    (event,) = ordered[3].events
    assert event.name == "exception"
