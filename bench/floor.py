"""``python -m bench --floor``: the Python cost per message, without sockets or a second process.

The end-to-end cells measure the library together with the kernel, the event loop's I/O and
the scheduling of two processes on two cores, which moves from run to run. This measures
only what runs in Python for one message, in one process, against an in-memory socket:

- **server**: chunks of 100 request (or event) frames, as a client with 100 requests in
  flight writes them, fed to the TCP server's connection; CPU per message until every reply
  was written.
- **client**: 100 (or 1) callers awaiting ``send()`` in a loop (or emitting), the bytes they
  write answered in the next loop turn by the raw server's code run in the same process;
  CPU per request, that raw server's share included (the same for both columns).

polybus runs with its defaults (30 s timeout, the deadline sent in the TCP ``metadata``) and
without a timeout (no deadline to keep or send). The raw column is ``raw_tcp``'s code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from . import impl_polybus, raw_tcp
from .common import EXPECTED, PAYLOAD, Config

CHUNK = 100
"""Frames per read on the server side, and callers on the client side."""


class MemorySocket:
    """An in-memory ``asyncio.Transport`` for one protocol: what it writes goes to ``peer``
    (called at once), what ``peer`` answers is delivered to it in the next loop turn."""

    def __init__(self, protocol: asyncio.Protocol, peer: Callable[[bytes], Any] | None) -> None:
        self.protocol = protocol
        self.peer = peer
        self.loop = asyncio.get_running_loop()
        protocol.connection_made(self)  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer(data)

    def answer(self, data: bytes) -> None:
        self.loop.call_soon(self.protocol.data_received, data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close


def frames(packet: dict[str, Any], count: int, *, ids: bool) -> bytes:
    out = []
    for i in range(count):
        body = orjson.dumps({**packet, "id": f"{i:016x}"} if ids else packet)
        out.append(b"%d#%b" % (len(body), body))
    return b"".join(out)


async def cpu_per_message(
    step: Callable[[], Awaitable[int]], seconds: float = 1.2, windows: int = 8
) -> float:
    """The lowest CPU µs per message over ``windows`` windows (other work on the machine
    only ever adds to a window, as with ``timeit``); ``step`` returns messages done."""
    await step()  # warm-up
    results = []
    for _ in range(windows):
        done = 0
        start = time.process_time()
        deadline = time.perf_counter() + seconds / windows
        while time.perf_counter() < deadline:
            done += await step()
        results.append((time.process_time() - start) / done * 1e6)
    return min(results)


class Row(NamedTuple):
    side: str
    scenario: str
    polybus: float
    raw: float


class Counting:
    """Counts what the server side of one step handled: replies written, events run."""

    def __init__(self) -> None:
        self.handled = 0
        self.all_handled: asyncio.Future[None] | None = None

    def count(self, messages: int) -> None:
        self.handled += messages
        if self.handled == CHUNK and self.all_handled is not None and not self.all_handled.done():
            self.all_handled.set_result(None)

    def one(self) -> None:
        self.count(1)

    def replies(self, data: bytes) -> None:
        self.count(data.count(b"#{"))  # one per reply frame

    def reading(self, conn: asyncio.Protocol, read: bytes) -> Callable[[], Awaitable[int]]:
        """A step: ``read`` fed to ``conn``, done once all its messages were handled."""
        MemorySocket(conn, self.replies)

        async def step() -> int:
            self.handled = 0
            self.all_handled = asyncio.get_running_loop().create_future()
            conn.data_received(read)  # polybus works off a read 16 frames a turn
            await self.all_handled
            return CHUNK

        return step


def server_reads(cfg: Config) -> dict[str, bytes]:
    deadline = {"x-polybus-deadline": f"{time.time() + 3600:.3f}"}
    request = {"pattern": cfg.rpc, "data": PAYLOAD}
    with_deadline = {**request, "metadata": deadline}
    return {
        "request, deadline in metadata": frames(with_deadline, CHUNK, ids=True),
        "request": frames(request, CHUNK, ids=True),
        "event": frames({"pattern": cfg.event, "data": PAYLOAD}, CHUNK, ids=False),
    }


def server_connection(app: Any) -> asyncio.Protocol:
    from polybus.transports.tcp._server import _ServerConnection

    return _ServerConnection(app.transport)


async def server_floor(cfg: Config) -> list[Row]:
    counting = Counting()
    rows = []
    async with impl_polybus.serve(cfg, counting.one) as app:  # the service the cells run
        for scenario, read in server_reads(cfg).items():
            polybus = server_connection(app)
            raw = raw_tcp.ServerProtocol(counting.one)
            rows.append(
                Row(
                    "server",
                    scenario,
                    await cpu_per_message(counting.reading(polybus, read)),
                    await cpu_per_message(counting.reading(raw, read)),
                )
            )
    return rows


def calling(
    call: Callable[[], Awaitable[Any]], callers: int, *, check: bool = True
) -> Callable[[], Awaitable[int]]:
    """A step: ``callers`` tasks each making 20 calls in a row."""

    async def caller() -> None:
        for _ in range(20):
            result = await call()
            if check and result != EXPECTED:
                raise AssertionError(f"bad reply {result!r}")

    async def step() -> int:
        await asyncio.gather(*(caller() for _ in range(callers)))
        return 20 * callers

    return step


def attach(protocol: asyncio.Protocol) -> None:
    """Connect a client's ``protocol`` to the raw server's code, in memory."""
    server = raw_tcp.ServerProtocol(lambda: None)
    client_side = MemorySocket(protocol, server.data_received)
    MemorySocket(server, client_side.answer)


async def polybus_client(**options: Any) -> Any:
    """A TCP ``ClientProxy`` whose connection is in memory, to the raw server's code."""
    from polybus import create_client
    from polybus.transports.tcp._common import FramedConnection

    proxy = create_client("tcp://127.0.0.1:1", **options)
    transport = proxy.transport
    conn = FramedConnection(1 << 20, transport._on_frames)  # type: ignore[attr-defined]
    attach(conn)
    transport._conn = conn  # type: ignore[attr-defined]
    await proxy.connect()  # the connection is there: binds the proxy, opens nothing
    return proxy


async def client_floor(cfg: Config) -> list[Row]:
    raw = raw_tcp.Client(cfg)
    attach(raw)
    default = await polybus_client()
    untimed = await polybus_client(timeout=None)
    rows = []
    for scenario, callers in (("RPC, 100 in flight", CHUNK), ("RPC, one at a time", 1)):
        raw_cost = await cpu_per_message(calling(partial(raw.call, PAYLOAD), callers))
        for label, proxy in ((scenario, default), (f"{scenario}, no timeout", untimed)):
            cost = await cpu_per_message(calling(partial(proxy.send, cfg.rpc, PAYLOAD), callers))
            rows.append(Row("client", label, cost, raw_cost))
    rows.append(
        Row(
            "client",
            "events, 100 in flight",
            await cpu_per_message(
                calling(partial(default.emit, cfg.event, PAYLOAD), CHUNK, check=False)
            ),
            await cpu_per_message(calling(partial(raw.emit, PAYLOAD), CHUNK, check=False)),
        )
    )
    await default.close()
    await untimed.close()
    return rows


async def lowest_of(
    steps: tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[int]]], rounds: int = 3
) -> tuple[float, float]:
    """The lowest CPU µs per message of each of two steps, measured in turns (so that a
    busy moment of the machine does not fall on one of them only)."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            best[i] = min(best[i], await cpu_per_message(step))
    return best[0], best[1]


async def metrics_floor(cfg: Config) -> list[Row]:
    """polybus with :class:`~polybus.prometheus.PrometheusMiddleware` (``polybus`` column)
    against polybus without middleware (``raw`` column), on both sides."""
    from prometheus_client import CollectorRegistry

    from polybus.prometheus import PrometheusMiddleware

    metrics = PrometheusMiddleware(registry=CollectorRegistry())
    counting = Counting()
    rows = []
    async with (
        impl_polybus.serve(cfg, counting.one, middleware=[metrics]) as measured,
        impl_polybus.serve(cfg, counting.one) as plain,
    ):
        for scenario, read in server_reads(cfg).items():
            on, off = await lowest_of(
                (
                    counting.reading(server_connection(measured), read),
                    counting.reading(server_connection(plain), read),
                )
            )
            rows.append(Row("server", scenario, on, off))
    with_metrics = await polybus_client(middleware=[metrics])
    without = await polybus_client()
    for scenario, callers in (("RPC, 100 in flight", CHUNK), ("RPC, one at a time", 1)):
        on, off = await lowest_of(
            (
                calling(partial(with_metrics.send, cfg.rpc, PAYLOAD), callers),
                calling(partial(without.send, cfg.rpc, PAYLOAD), callers),
            )
        )
        rows.append(Row("client", scenario, on, off))
    on, off = await lowest_of(
        (
            calling(partial(with_metrics.emit, cfg.event, PAYLOAD), CHUNK, check=False),
            calling(partial(without.emit, cfg.event, PAYLOAD), CHUNK, check=False),
        )
    )
    rows.append(Row("client", "events, 100 in flight", on, off))
    await with_metrics.close()
    await without.close()
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| side | scenario | polybus µs/msg | raw µs/msg | raw/polybus |",
        "|---|---|---|---|---|",
    ]
    for side, scenario, polybus, raw in rows:
        lines.append(f"| {side} | {scenario} | {polybus:.2f} | {raw:.2f} | {raw / polybus:.2f} |")
    return "\n".join(lines)


def metrics_table(rows: list[Row]) -> str:
    lines = [
        "| side | scenario | no middleware µs/msg | metrics µs/msg | added µs/msg | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for side, scenario, on, off in rows:
        lines.append(
            f"| {side} | {scenario} | {off:.2f} | {on:.2f} | {on - off:.2f} | {on / off:.2f} |"
        )
    return "\n".join(lines)


def main(loop: str, out: Path, *, metrics: bool = False) -> None:
    cfg = Config(impl="polybus", transport="tcp", prefix="floor")

    async def measure() -> list[Row]:
        if metrics:
            return await metrics_floor(cfg)
        return [*await server_floor(cfg), *await client_floor(cfg)]

    if loop == "asyncio":
        results = asyncio.run(measure())
    else:
        import uvloop

        results = uvloop.run(measure())
    if metrics:
        name = "floor-metrics.md"
        text = (
            f"## Cost of the Prometheus middleware per message, TCP, in one process ({loop})\n\n"
            "`python -m bench --floor --metrics`: polybus with `PrometheusMiddleware` on both "
            "sides against polybus without middleware, measured in turns; see bench/floor.py. "
            "The client rows include the raw server's code answering in the same process.\n\n"
            + metrics_table(results)
            + "\n"
        )
    else:
        name = "floor.md"
        text = (
            f"## Python cost per message, TCP, in one process ({loop})\n\n"
            "`python -m bench --floor`: no sockets; see bench/floor.py. The client rows include "
            "the raw server's code answering in the same process.\n\n" + table(results) + "\n"
        )
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text)
