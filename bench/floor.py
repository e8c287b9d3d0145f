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


async def server_floor(cfg: Config, middleware: list[Any] | None = None) -> list[Row]:
    from polybus.transports.tcp._server import _ServerConnection

    handled = 0
    all_handled: asyncio.Future[None] | None = None

    def count(messages: int) -> None:
        nonlocal handled
        handled += messages
        if handled == CHUNK and all_handled is not None and not all_handled.done():
            all_handled.set_result(None)

    def count_one() -> None:
        count(1)

    def count_replies(data: bytes) -> None:
        count(data.count(b"#{"))  # one per reply frame

    def reading(conn: asyncio.Protocol, read: bytes) -> Callable[[], Awaitable[int]]:
        MemorySocket(conn, count_replies)

        async def step() -> int:
            nonlocal handled, all_handled
            handled = 0
            all_handled = asyncio.get_running_loop().create_future()
            conn.data_received(read)  # polybus works off a read 16 frames a turn
            await all_handled
            return CHUNK

        return step

    deadline = {"x-polybus-deadline": f"{time.time() + 3600:.3f}"}
    request = {"pattern": cfg.rpc, "data": PAYLOAD}
    with_deadline = {**request, "metadata": deadline}
    reads = {
        "request, deadline in metadata": frames(with_deadline, CHUNK, ids=True),
        "request": frames(request, CHUNK, ids=True),
        "event": frames({"pattern": cfg.event, "data": PAYLOAD}, CHUNK, ids=False),
    }
    rows = []
    async with impl_polybus.serve(cfg, count_one, middleware or ()) as app:
        for scenario, read in reads.items():
            polybus = _ServerConnection(app.transport)  # type: ignore[arg-type]
            raw = raw_tcp.ServerProtocol(count_one)
            rows.append(
                Row(
                    "server",
                    scenario,
                    await cpu_per_message(reading(polybus, read)),
                    await cpu_per_message(reading(raw, read)),
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


async def client_floor(cfg: Config, middleware: list[Any] | None = None) -> list[Row]:
    from polybus import create_client
    from polybus.transports.tcp._common import FramedConnection

    def attach(protocol: asyncio.Protocol) -> None:
        server = raw_tcp.ServerProtocol(lambda: None)
        client_side = MemorySocket(protocol, server.data_received)
        MemorySocket(server, client_side.answer)

    async def polybus_client(**options: Any) -> Any:
        proxy = create_client("tcp://127.0.0.1:1", middleware=middleware or (), **options)
        transport = proxy.transport
        conn = FramedConnection(1 << 20, transport._on_frames)  # type: ignore[attr-defined]
        attach(conn)
        transport._conn = conn  # type: ignore[attr-defined]
        await proxy.connect()  # the connection is there: binds the proxy, opens nothing
        return proxy

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


def table(rows: list[Row]) -> str:
    lines = [
        "| side | scenario | polybus µs/msg | raw µs/msg | raw/polybus |",
        "|---|---|---|---|---|",
    ]
    for side, scenario, polybus, raw in rows:
        lines.append(f"| {side} | {scenario} | {polybus:.2f} | {raw:.2f} | {raw / polybus:.2f} |")
    return "\n".join(lines)


def middleware_table(plain: list[Row], sets: dict[str, list[Row]]) -> str:
    """polybus's cost per message with each middleware set, beside none."""
    names = list(sets)
    lines = [
        "| side | scenario | none µs/msg | "
        + " | ".join(f"{name} µs/msg (Δ, ratio)" for name in names)
        + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for i, row in enumerate(plain):
        cells = [
            f"{sets[n][i].polybus:.2f} ({sets[n][i].polybus - row.polybus:+.2f}, "
            f"{sets[n][i].polybus / row.polybus:.2f})"
            for n in names
        ]
        lines.append(
            f"| {row.side} | {row.scenario} | {row.polybus:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


MIDDLEWARE_TURNS = 3
"""Rounds of none-then-every-set that ``--middleware`` measures."""


def _lowest(a: list[Row], b: list[Row]) -> list[Row]:
    return [
        x._replace(polybus=min(x.polybus, y.polybus), raw=min(x.raw, y.raw))
        for x, y in zip(a, b, strict=True)
    ]


def main(loop: str, out: Path, middleware: list[str] | None = None) -> None:
    from .middleware import SETS

    cfg = Config(impl="polybus", transport="tcp", prefix="floor")
    unknown = [name for name in middleware or [] if name not in SETS]
    if unknown:
        raise SystemExit(f"unknown middleware set {unknown}: known {sorted(SETS)}")

    async def measure() -> tuple[list[Row], dict[str, list[Row]]]:
        plain = [*await server_floor(cfg), *await client_floor(cfg)]
        sets: dict[str, list[Row]] = {}
        # With sets, in turns (none, each set, none...) and the lowest of each row kept: a
        # busy moment of this shared machine then does not fall on one column only.
        for turn in range(MIDDLEWARE_TURNS if middleware else 0):
            if turn:
                plain = _lowest(plain, [*await server_floor(cfg), *await client_floor(cfg)])
            for name in middleware or []:
                rows = [
                    *await server_floor(cfg, SETS[name]()),
                    *await client_floor(cfg, SETS[name]()),
                ]
                sets[name] = _lowest(sets[name], rows) if name in sets else rows
        return plain, sets

    if loop == "asyncio":
        results, sets = asyncio.run(measure())
    else:
        import uvloop

        results, sets = uvloop.run(measure())
    text = (
        f"## Python cost per message, TCP, in one process ({loop})\n\n"
        "`python -m bench --floor`: no sockets; see bench/floor.py. The client rows include "
        "the raw server's code answering in the same process.\n\n" + table(results) + "\n"
    )
    if sets:
        text += (
            f"\n## With middleware (`--middleware {','.join(sets)}`, bench/middleware.py)\n\n"
            + middleware_table(results, sets)
            + "\n"
        )
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "floor.md").write_text(text)
