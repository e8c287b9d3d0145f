"""What every Python implementation shares: the config, the scenarios, the load driver and
the control channel over which a client learns how many events its server has counted.

An implementation module (``impl_polybus``, ``impl_faststream``, ``raw_<transport>``)
exposes two functions:

- ``serve(cfg, on_event)``: an async context manager; inside it the server answers
  ``cfg.rpc`` requests (payload ``{"a": [1, 2, 3]}`` → ``6``) and calls ``on_event()`` once
  per ``cfg.event`` event received;
- ``connect(cfg)``: returns a :class:`BenchClient`.

The NestJS scripts under ``bench/nest/`` implement the same contract in JavaScript.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

PAYLOAD: dict[str, Any] = {"a": [1, 2, 3]}
EXPECTED = 6
EVENT_WAIT_S = 30.0
"""How long a client waits for its server to count the events of one run."""
MAX_BACKLOG = 10_000
"""Events emitted but not yet counted by the server beyond which emitters pause."""


@dataclass
class Plan:
    """How long each cell runs: a warm-up, then ``runs`` measured windows of ``duration``."""

    warmup: float = 1.0
    runs: int = 5
    duration: float = 1.5


@dataclass
class Config:
    """Everything a server or client process needs (passed as JSON on the command line)."""

    impl: str
    transport: str
    prefix: str
    tcp_port: int = 0
    redis_url: str = "redis://127.0.0.1:6379"
    nats_url: str = "nats://127.0.0.1:4222"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    kafka_bootstrap: str = "127.0.0.1:19092"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    kafka_fetch_max_wait_ms: int = 10
    kafka_session_timeout_ms: int = 6000
    loop: str = "uvloop"
    ctl_port: int = 0
    plan: Plan = field(default_factory=Plan)
    scenarios: list[tuple[str, int]] = field(
        default_factory=lambda: [("rpc", 1), ("rpc", 100), ("events", 100)]
    )

    @property
    def rpc(self) -> str:
        """The request pattern / channel / subject / topic."""
        return f"{self.prefix}.sum"

    @property
    def event(self) -> str:
        return f"{self.prefix}.ev"

    @property
    def queue(self) -> str:
        """RabbitMQ work queue."""
        return f"{self.prefix}.q"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        raw["plan"] = Plan(**raw["plan"])
        raw["scenarios"] = [tuple(s) for s in raw["scenarios"]]
        return cls(**raw)


class BenchClient(Protocol):
    async def call(self, data: Any) -> Any:
        """One request-response; returns the reply value."""

    async def emit(self, data: Any) -> None:
        """Publish one event; returns once the transport accepted it."""

    async def close(self) -> None: ...


ServeFn = Callable[[Config, Callable[[], None]], contextlib.AbstractAsyncContextManager[None]]
ConnectFn = Callable[[Config], Awaitable[BenchClient]]


# -- event counting and the control channel ------------------------------------------------


class Counter:
    """Events received by a server; ``wait(n)`` resolves once ``n`` have been counted."""

    __slots__ = ("n", "target", "waiter")

    def __init__(self) -> None:
        self.n = 0
        self.target = -1
        self.waiter: asyncio.Future[None] | None = None

    def hit(self) -> None:
        self.n += 1
        if self.n == self.target and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, target: int, timeout: float) -> int:
        if self.n < target:
            self.target = target
            self.waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.waiter, timeout)
            self.waiter = None
        return self.n


@contextlib.asynccontextmanager
async def control_server(counter: Counter) -> AsyncIterator[int]:
    """Line protocol on 127.0.0.1: ``wait <n> <timeout_ms>`` → ``<count>`` once ``n``
    events were counted (n=0 asks now); ``cpu`` → the server process's CPU seconds."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if line.startswith(b"cpu"):
                    writer.write(b"%.6f\n" % time.process_time())
                    continue
                _, n, timeout_ms = line.split()
                count = await counter.wait(int(n), int(timeout_ms) / 1000)
                writer.write(b"%d\n" % count)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class Control:
    """The client end of the control channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Control:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def wait(self, n: int, timeout: float = EVENT_WAIT_S) -> int:
        self._writer.write(b"wait %d %d\n" % (n, int(timeout * 1000)))
        return int(await self._reader.readline())

    async def cpu(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        self._writer.write(b"cpu\n")
        return float(await self._reader.readline())

    def close(self) -> None:
        self._writer.close()


class CpuMeter:
    """CPU time of this process and of the server over one window."""

    def __init__(self, control: Control) -> None:
        self._control = control
        self._client = 0.0
        self._server = 0.0

    async def start(self) -> None:
        self._client = time.process_time()
        self._server = await self._control.cpu()

    async def stop(self, ops: int) -> dict[str, float]:
        client = time.process_time() - self._client
        server = await self._control.cpu() - self._server
        per = 1e6 / ops if ops else 0.0
        return {"client_cpu_us": client * per, "server_cpu_us": server * per}


# -- garbage collector time ------------------------------------------------------------------


class GcMeter:
    """Time spent in the cyclic garbage collector, per generation (via ``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1

    def snapshot(self) -> tuple[list[float], list[int]]:
        return list(self.seconds), list(self.collections)

    def since(self, snap: tuple[list[float], list[int]]) -> dict[str, Any]:
        return {
            "gc_s": [round(a - b, 4) for a, b in zip(self.seconds, snap[0], strict=True)],
            "gc_collections": [a - b for a, b in zip(self.collections, snap[1], strict=True)],
        }


GC = GcMeter()


# -- the load driver -------------------------------------------------------------------------


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def window(latencies_ns: list[int], seconds: float, count: int | None = None) -> dict[str, Any]:
    """One measured run: ops/s and latency percentiles in microseconds."""
    lat = sorted(latencies_ns)
    n = len(lat) if count is None else count
    return {
        "n": n,
        "seconds": round(seconds, 4),
        "ops": n / seconds if seconds > 0 else 0.0,
        "p50_us": percentile(lat, 0.50) / 1000,
        "p99_us": percentile(lat, 0.99) / 1000,
    }


async def drive_rpc(
    client: BenchClient, concurrency: int, plan: Plan, control: Control
) -> dict[str, Any]:
    """``concurrency`` workers, each awaiting its next request as soon as one completes.

    The workers run without pause across the warm-up and every window; a window is a slice
    of time whose completed requests (and their latencies) are counted.
    """
    call = client.call
    bucket: list[list[int]] = [[]]
    errors: list[str] = []
    stop = False
    clock = time.perf_counter_ns

    async def worker() -> None:
        while not stop:
            t = clock()
            try:
                result = await call(PAYLOAD)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if len(errors) > 1000:
                    raise
                continue
            bucket[0].append(clock() - t)
            if result != EXPECTED:
                raise AssertionError(f"bad reply {result!r}")

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    runs = []
    cpu = CpuMeter(control)
    try:
        await asyncio.sleep(plan.warmup)
        for _ in range(plan.runs):
            await cpu.start()
            current = bucket[0] = []
            t0 = time.perf_counter()
            await asyncio.sleep(plan.duration)
            bucket[0] = []
            elapsed = time.perf_counter() - t0
            runs.append({**window(current, elapsed), **await cpu.stop(len(current))})
            if any(t.done() for t in tasks):
                break
    finally:
        stop = True
        done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return {"runs": runs, "errors": len(errors), "first_error": errors[0] if errors else None}


async def drive_events(
    client: BenchClient, concurrency: int, plan: Plan, control: Control
) -> dict[str, Any]:
    """Each window: ``concurrency`` workers emit for ``duration`` s, then the client waits
    until the server has counted every event; ops/s = events / (last counted - first sent).
    Emitters pause while more than ``MAX_BACKLOG`` events are on their way (the server's
    count is polled every 20 ms), so a slow consumer bounds the window instead of a
    backlog piling up in the broker. The latencies are the time ``emit()`` takes to be
    accepted by the transport."""
    emit = client.emit
    total = await control.wait(0)
    runs = []
    clock = time.perf_counter_ns

    async def worker(latencies: list[int], stop: asyncio.Event, gate: asyncio.Event) -> None:
        while not stop.is_set():
            if not gate.is_set():
                await gate.wait()
                continue
            t = clock()
            await emit(PAYLOAD)
            latencies.append(clock() - t)

    async def throttle(latencies: list[int], stop: asyncio.Event, gate: asyncio.Event) -> None:
        while not stop.is_set():
            if total + len(latencies) - await control.wait(0) > MAX_BACKLOG:
                gate.clear()
            else:
                gate.set()
            await asyncio.sleep(0.02)

    cpu = CpuMeter(control)
    for index in range(plan.runs + 1):  # window 0 is the warm-up
        latencies: list[int] = []
        stop, gate = asyncio.Event(), asyncio.Event()
        gate.set()
        await cpu.start()
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(worker(latencies, stop, gate)) for _ in range(concurrency)]
        throttling = asyncio.ensure_future(throttle(latencies, stop, gate))
        await asyncio.sleep(plan.warmup if index == 0 else plan.duration)
        stop.set()
        await throttling
        gate.set()
        await asyncio.gather(*tasks)
        sent = len(latencies)
        total += sent
        received = await control.wait(total)
        elapsed = time.perf_counter() - t0
        lost = total - received
        total = received
        usage = await cpu.stop(sent)
        if index:
            runs.append({**window(latencies, elapsed, count=sent - lost), **usage, "lost": lost})
    return {"runs": runs, "errors": sum(r["lost"] for r in runs), "first_error": None}


async def drive(cfg: Config, connect: ConnectFn) -> AsyncIterator[dict[str, Any]]:
    """Run every scenario of ``cfg`` against its server; yields one result per scenario."""
    client = await connect(cfg)
    control = await Control.open(cfg.ctl_port)
    try:
        if any(kind == "rpc" for kind, _ in cfg.scenarios):
            check = await asyncio.wait_for(client.call(PAYLOAD), 30)
            if check != EXPECTED:
                raise AssertionError(f"bad reply {check!r}")
        for kind, concurrency in cfg.scenarios:
            started = time.perf_counter()
            gc_before = GC.snapshot()
            try:
                if kind == "rpc":
                    result = await drive_rpc(client, concurrency, cfg.plan, control)
                else:
                    result = await drive_events(client, concurrency, cfg.plan, control)
            except Exception as exc:
                result = {"runs": [], "errors": 1, "first_error": f"{type(exc).__name__}: {exc}"}
            result.update(scenario=kind, concurrency=concurrency, **GC.since(gc_before))
            result["wall_s"] = round(time.perf_counter() - started, 2)
            yield result
    finally:
        control.close()
        await client.close()


def install_loop(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
