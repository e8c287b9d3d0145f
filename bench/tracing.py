"""``python -m bench --tracing``: what :class:`polybus.otel.Tracing` costs per message.

The ``--floor`` setup (one process, in-memory socket, TCP; see floor.py), each row measured
without middleware, with one that only passes through (what the middleware path costs by
itself) and with ``Tracing`` over an SDK ``TracerProvider`` (default sampler:
every span recorded) whose ``SimpleSpanProcessor`` hands each span to an exporter that
drops it: the cost of making, filling and ending the spans and of the trace context in the
headers, not of shipping spans anywhere. The server rows with middleware read frames that
carry a ``traceparent`` in their ``metadata``, as a traced client sends them; the one
without reads frames without.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from polybus import ClientMiddleware, ServerMiddleware

from . import impl_polybus
from .common import PAYLOAD, Config
from .floor import (
    CHUNK,
    CLIENT_SCENARIOS,
    Counter,
    calling,
    cpu_per_message,
    memory_client,
    polybus_connection,
    server_reads,
)

if TYPE_CHECKING:
    from polybus.otel import Tracing

TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class Row(NamedTuple):
    side: str
    scenario: str
    off: float
    passing: float
    on: float


def tracing() -> Tracing:
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
    return Tracing(tracer_provider=provider)


async def server_rows(cfg: Config, traced: Tracing) -> list[Row]:
    counter = Counter()
    plain = server_reads(cfg)
    with_context = server_reads(cfg, TRACEPARENT)
    rows = []
    async with (
        impl_polybus.serve(cfg, counter.one) as off,
        impl_polybus.serve(cfg, counter.one, [ServerMiddleware()]) as passing,
        impl_polybus.serve(cfg, counter.one, [traced]) as on,
    ):
        for scenario in ("request", "event"):
            costs = [
                await cpu_per_message(counter.reading(polybus_connection(app), reads[scenario]))
                for app, reads in ((off, plain), (passing, with_context), (on, with_context))
            ]
            rows.append(Row("server", scenario, *costs))
    return rows


async def client_rows(cfg: Config, traced: Tracing) -> list[Row]:
    proxies = [
        await memory_client(),
        await memory_client(middleware=[ClientMiddleware()]),
        await memory_client(middleware=[traced]),
    ]
    rows = []
    for scenario, callers in CLIENT_SCENARIOS:
        costs = [
            await cpu_per_message(calling(partial(proxy.send, cfg.rpc, PAYLOAD), callers))
            for proxy in proxies
        ]
        rows.append(Row("client", scenario, *costs))
    costs = [
        await cpu_per_message(calling(partial(proxy.emit, cfg.event, PAYLOAD), CHUNK, check=False))
        for proxy in proxies
    ]
    rows.append(Row("client", "events, 100 in flight", *costs))
    for proxy in proxies:
        await proxy.close()
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| side | scenario | no middleware µs/msg | pass-through µs/msg | Tracing µs/msg "
        "| Tracing - none | Tracing/none |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, scenario, off, passing, on in rows:
        lines.append(
            f"| {side} | {scenario} | {off:.2f} | {passing:.2f} | {on:.2f} | {on - off:.2f} "
            f"| {on / off:.2f} |"
        )
    return "\n".join(lines)


def main(loop: str, out: Path) -> None:
    cfg = Config(impl="polybus", transport="tcp", prefix="floor")

    async def measure() -> list[Row]:
        traced = tracing()
        return [*await server_rows(cfg, traced), *await client_rows(cfg, traced)]

    if loop == "asyncio":
        results = asyncio.run(measure())
    else:
        import uvloop

        results = uvloop.run(measure())
    text = (
        f"## Tracing cost per message, TCP, in one process ({loop})\n\n"
        "`python -m bench --tracing`: polybus without middleware, with a pass-through one and "
        "with `polybus.otel.Tracing` (SDK TracerProvider, every span recorded, exported to "
        "nowhere); see "
        "bench/tracing.py. The client rows include the raw server's code answering in "
        "the same process.\n\n" + table(results) + "\n"
    )
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracing.md").write_text(text)
