"""Runs the matrix: per transport and implementation, one server process and one client
process on the same broker; collects the cells, writes JSON lines and a Markdown report."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import Config, Plan

ROOT = Path(__file__).resolve().parent.parent
NEST_DIR = Path(__file__).resolve().parent / "nest"
NEST_MODULES = ROOT / "tests" / "integration" / "nest" / "node_modules"
TRANSPORTS = ("tcp", "redis", "nats", "rabbitmq", "kafka", "mqtt")
IMPLS = ("polybus", "raw", "faststream", "nest")
SCENARIOS: list[tuple[str, int]] = [("rpc", 1), ("rpc", 100), ("events", 100)]
BROKER_PORTS = {"redis": 6379, "nats": 4222, "rabbitmq": 5672, "kafka": 19092, "mqtt": 1883}
LABELS = {"polybus": "polybus", "raw": "raw", "faststream": "FastStream", "nest": "NestJS"}

FULL = Plan(warmup=1.0, runs=5, duration=1.5)
QUICK = Plan(warmup=0.3, runs=2, duration=0.5)


def supports(impl: str, transport: str, scenario: str) -> bool:
    """FastStream has no TCP or MQTT transport and no request-reply on Kafka."""
    if impl == "faststream":
        return transport not in ("tcp", "mqtt") and not (transport == "kafka" and scenario == "rpc")
    return True


@dataclass
class Cell:
    transport: str
    impl: str
    loop: str
    scenario: str
    concurrency: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    wall_s: float = 0.0
    gc_s: list[float] = field(default_factory=list)
    load: float = 0.0
    """1-minute load average when the pair started (other work on the machine skews cells)."""

    @property
    def key(self) -> str:
        return f"{self.scenario} c={self.concurrency}"

    def median(self, name: str) -> float | None:
        values = [r[name] for r in self.runs if r.get(name) == r.get(name)]  # drop NaN
        return statistics.median(values) if values else None

    def record(self, versions: dict[str, str], plan: Plan) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "impl": self.impl,
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "loop": self.loop,
            "ops": self.median("ops"),
            "p50_us": self.median("p50_us"),
            "p99_us": self.median("p99_us"),
            "client_cpu_us": self.median("client_cpu_us"),
            "server_cpu_us": self.median("server_cpu_us"),
            "runs": self.runs,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": self.wall_s,
            "client_gc_s": self.gc_s,
            "loadavg_1m_before": self.load,
            "plan": plan.__dict__,
            "versions": versions,
            "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


# -- environment -------------------------------------------------------------------------------


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available(transport: str) -> str | None:
    """None when ``transport`` can be benchmarked, else the reason it cannot."""
    if transport in BROKER_PORTS and not port_open(BROKER_PORTS[transport]):
        return f"no broker on 127.0.0.1:{BROKER_PORTS[transport]}"
    return None


def adapter_ready(transport: str) -> bool:
    return importlib.util.find_spec(f"polybus.transports.{transport}") is not None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "polybus",
        "orjson",
        "redis",
        "hiredis",
        "nats-py",
        "aio-pika",
        "aiormq",
        "aiokafka",
        "aiomqtt",
        "paho-mqtt",
        "faststream",
        "uvloop",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    node = shutil.which("node")
    if node:
        import subprocess

        out["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        out["node"] = out["node"].strip()
    packages = ("@nestjs/microservices", "ioredis", "@nats-io/transport-node", "amqplib", "mqtt")
    for package in packages:
        manifest = NEST_MODULES / package / "package.json"
        if manifest.exists():
            out[package] = json.loads(manifest.read_text())["version"]
    out["kafkajs"] = _nest_version("kafkajs")
    return out


def _nest_version(package: str) -> str:
    manifest = NEST_MODULES / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else "-"


# -- processes ---------------------------------------------------------------------------------


def command(role: str, cfg: Config) -> list[str]:
    if cfg.impl == "nest":
        return [shutil.which("node") or "node", str(NEST_DIR / f"{role}.mjs"), cfg.to_json()]
    return [sys.executable, "-m", "bench.worker", role, cfg.to_json()]


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 15) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def hook(cfg: Config, name: str) -> None:
    """Broker-side setup/cleanup (``prepare``/``cleanup`` of the raw module), if any."""
    if cfg.transport == "tcp":
        return
    module = importlib.import_module(f"bench.raw_{cfg.transport}")
    fn = getattr(module, name, None)
    if fn is not None:
        try:
            await asyncio.wait_for(fn(cfg), 60)
        except Exception as exc:
            print(f"    {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


async def run_pair(cfg: Config, logs: Path) -> list[dict[str, Any]]:
    """Start the server, run the client against it, stop the server; the client's results."""
    budget = 90 + len(cfg.scenarios) * (cfg.plan.warmup + cfg.plan.runs * cfg.plan.duration) * 3
    stem = f"{cfg.transport}-{cfg.impl}-{cfg.loop}"
    await hook(cfg, "prepare")
    with (logs / f"{stem}-server.log").open("wb") as server_log:
        server = await asyncio.create_subprocess_exec(
            *command("server", cfg), stdout=asyncio.subprocess.PIPE, stderr=server_log, cwd=ROOT
        )
        try:
            assert server.stdout is not None
            line = await asyncio.wait_for(ready(server.stdout), 60)
            if not line.startswith(b"READY"):
                raise RuntimeError(f"server did not start (see {logs / stem}-server.log)")
            client_cfg = Config(**{**cfg.__dict__, "ctl_port": int(line.split()[1])})
            return await run_client(client_cfg, logs / f"{stem}-client.log", budget)
        finally:
            await stop_process(server)
            await hook(cfg, "cleanup")


async def ready(stdout: asyncio.StreamReader) -> bytes:
    """The server's ``READY <port>`` line (b"" if it exits first)."""
    while line := await stdout.readline():
        if line.startswith(b"READY"):
            return line
    return b""


async def run_client(cfg: Config, log: Path, budget: float) -> list[dict[str, Any]]:
    results = []
    with log.open("wb") as client_log:
        client = await asyncio.create_subprocess_exec(
            *command("client", cfg), stdout=asyncio.subprocess.PIPE, stderr=client_log, cwd=ROOT
        )
        stdout = client.stdout
        assert stdout is not None

        async def read() -> None:
            while line := await stdout.readline():
                with contextlib.suppress(json.JSONDecodeError):
                    results.append(json.loads(line))

        try:
            await asyncio.wait_for(read(), budget)
        except asyncio.TimeoutError:
            results.append({"error": f"client exceeded {budget:.0f} s"})
        finally:
            await stop_process(client, 5)
    if client.returncode not in (0, None) and not results:
        results.append({"error": f"client exited {client.returncode} (see {log})"})
    return results


# -- the matrix --------------------------------------------------------------------------------


@dataclass
class Options:
    transports: list[str]
    impls: list[str]
    loops: list[str]
    plan: Plan
    out: Path
    scenarios: list[tuple[str, int]] = field(default_factory=lambda: list(SCENARIOS))


async def run_matrix(options: Options) -> list[Cell]:
    logs = options.out / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    for transport in options.transports:
        reason = available(transport)
        if reason:
            print(f"## {transport}: skipped ({reason})", file=sys.stderr)
            continue
        for loop in options.loops:
            for impl in options.impls:
                if impl == "nest" and loop != options.loops[0]:
                    continue  # Node's loop does not change with --loop
                if impl == "polybus" and not adapter_ready(transport):
                    print(f"## {transport}/{impl}: adapter not importable", file=sys.stderr)
                    continue
                if impl == "nest" and not NEST_MODULES.exists():
                    print(f"## nest: run `npm ci` in {NEST_MODULES.parent}", file=sys.stderr)
                    continue
                scenarios = [s for s in options.scenarios if supports(impl, transport, s[0])]
                if not scenarios:
                    continue
                cfg = Config(
                    impl=impl,
                    transport=transport,
                    prefix=f"b{os.urandom(3).hex()}",
                    tcp_port=free_port(),
                    loop="node" if impl == "nest" else loop,
                    plan=options.plan,
                    scenarios=scenarios,
                )
                started = time.perf_counter()
                load = os.getloadavg()[0]
                print(
                    f"## {transport} {impl} {cfg.loop} (load {load:.2f}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                new = await run_cells(cfg, logs)
                for cell in new:
                    cell.load = load
                for cell in new:
                    print(f"   {summary(cell)}", file=sys.stderr, flush=True)
                print(f"   ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
                cells.extend(new)
    return cells


async def run_cells(cfg: Config, logs: Path) -> list[Cell]:
    """One server/client pair; scenarios it did not report are run once more."""
    try:
        results = await run_pair(cfg, logs)
    except Exception as exc:
        results = [{"error": f"{type(exc).__name__}: {exc}"}]
    cells = cells_from(results, cfg)
    missing = [(c.scenario, c.concurrency) for c in cells if not c.runs]
    if missing and len(missing) < len(cells) + 1:
        print(f"   retrying {missing}: {cells[-1].first_error}", file=sys.stderr, flush=True)
        retry = Config(**{**cfg.__dict__, "prefix": cfg.prefix + "r", "scenarios": missing})
        retry.tcp_port = free_port()
        try:
            again = cells_from(await run_pair(retry, logs), retry)
        except Exception as exc:
            again = cells_from([{"error": f"{type(exc).__name__}: {exc}"}], retry)
        cells = [c for c in cells if c.runs] + again
    return cells


def cells_from(results: list[dict[str, Any]], cfg: Config) -> list[Cell]:
    cells = []
    seen = set()
    for result in results:
        if "scenario" not in result:
            continue
        seen.add((result["scenario"], result["concurrency"]))
        cells.append(
            Cell(
                cfg.transport,
                cfg.impl,
                cfg.loop,
                result["scenario"],
                result["concurrency"],
                result["runs"],
                result.get("errors", 0),
                result.get("first_error"),
                result.get("wall_s", 0.0),
                result.get("gc_s", []),
            )
        )
    problem = next((r["error"] for r in results if "error" in r), "no result")
    for kind, concurrency in cfg.scenarios:
        if (kind, concurrency) not in seen:
            cells.append(Cell(cfg.transport, cfg.impl, cfg.loop, kind, concurrency, [], 1, problem))
    return cells


def summary(cell: Cell) -> str:
    ops = cell.median("ops")
    text = f"{cell.key:<13} {ops or 0:>9,.0f} ops/s"
    p50, p99 = cell.median("p50_us"), cell.median("p99_us")
    if p50 is not None and p99 is not None:
        text += f"  p50 {p50:,.0f} µs  p99 {p99:,.0f} µs"
    text += f"  cpu {fmt_cpu(cell)} µs/op"
    if cell.errors:
        text += f"  errors={cell.errors} {cell.first_error or ''}"
    return text


def write_results(cells: list[Cell], options: Options, info: dict[str, str]) -> Path:
    options.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = options.out / f"bench-{stamp}.jsonl"
    with path.open("w") as fh:
        for cell in cells:
            fh.write(json.dumps(cell.record(info, options.plan)) + "\n")
    shutil.copyfile(path, options.out / "latest.jsonl")
    return path


# -- report ------------------------------------------------------------------------------------


def find(cells: Iterable[Cell], **match: Any) -> Cell | None:
    for cell in cells:
        if all(getattr(cell, k) == v for k, v in match.items()):
            return cell
    return None


def fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    ops = cell.median("ops")
    if ops is None:
        return "error"
    p50, p99 = cell.median("p50_us"), cell.median("p99_us")
    text = f"{ops:,.0f}/s · {p50:,.0f}/{p99:,.0f} µs"
    return text + (" ⚠" if cell.errors else "")


def fmt_cpu(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    client, server = cell.median("client_cpu_us"), cell.median("server_cpu_us")
    if client is None or server is None:
        return "—"
    return f"{client:.1f} + {server:.1f}"


def ratio(a: Cell | None, b: Cell | None, name: str = "ops") -> float | None:
    if a is None or b is None:
        return None
    x, y = a.median(name), b.median(name)
    return x / y if x and y else None


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def cell_of(
    cells: Iterable[Cell], transport: str, impl: str, loop: str, kind: str, concurrency: int
) -> Cell | None:
    """One implementation's cell of a scenario (NestJS cells run on Node, whatever ``loop``)."""
    return find(
        cells,
        transport=transport,
        impl=impl,
        loop="node" if impl == "nest" else loop,
        scenario=kind,
        concurrency=concurrency,
    )


def rows(
    cells: list[Cell], options: Options, loop: str
) -> Iterator[tuple[str, dict[str, Cell | None]]]:
    """Per transport and scenario that has any cell: its label and each impl's cell."""
    for transport in options.transports:
        for kind, concurrency in options.scenarios:
            row = {impl: cell_of(cells, transport, impl, loop, kind, concurrency) for impl in IMPLS}
            if any(row.values()):
                yield f"{transport} | {kind} c={concurrency}", row


def markdown(cells: list[Cell], options: Options, info: dict[str, str], wall: float) -> str:
    loads = [c.load for c in cells]
    lines = [
        "# polybus benchmarks",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} CPUs · wall {wall / 60:.1f} min"
        f" · plan: warm-up {options.plan.warmup:g} s, {options.plan.runs} x "
        f"{options.plan.duration:g} s (median)",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        f"1-minute load average before each pair: {min(loads, default=0):.2f} to "
        f"{max(loads, default=0):.2f} (this run's own processes included; above ~1.5 other "
        "work was competing for the 2 cores)."
        "",
        "Cells: median ops/s · p50/p99 latency. RPC latency is request → reply; events "
        "latency is the time `emit()` takes to be accepted, and events ops/s count events "
        "the server received (end to end). ⚠ = errors or lost events (see the JSON lines).",
    ]
    for loop in options.loops:
        lines += ["", f"## Python loop: {loop}", ""]
        lines += [
            "| transport | scenario | polybus | raw | FastStream | NestJS "
            "| pb/raw | pb/FS | pb/Nest |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, row in rows(cells, options, loop):
            pb = row["polybus"]
            lines.append(
                f"| {label} | "
                + " | ".join(fmt_cell(row[i]) for i in IMPLS)
                + " | "
                + " | ".join(fmt_ratio(ratio(pb, row[i])) for i in ("raw", "faststream", "nest"))
                + " |"
            )
        lines += [
            "",
            f"### CPU per operation ({loop}): client + server µs (median)",
            "",
            "| transport | scenario | " + " | ".join(LABELS[i] for i in IMPLS) + " |",
            "|---|---|" + "---|" * len(IMPLS),
        ]
        for label, row in rows(cells, options, loop):
            lines.append(f"| {label} | " + " | ".join(fmt_cpu(row[i]) for i in IMPLS) + " |")
        lines += ["", f"### Targets ({loop})", ""]
        lines += ["| transport | target | measured | met |", "|---|---|---|---|"]
        for transport in options.transports:
            for name, value, goal in targets(cells, transport, loop):
                if value is None:
                    met = "—"
                elif goal is None:
                    met = "(reported)"
                else:
                    met = "yes" if goal(value) else "**no**"
                lines.append(f"| {transport} | {name} | {fmt_ratio(value)} | {met} |")
    return "\n".join(lines) + "\n"


def targets(cells: list[Cell], transport: str, loop: str) -> Iterator[tuple[str, Any, Any]]:
    def get(impl: str, kind: str, concurrency: int) -> Cell | None:
        return cell_of(cells, transport, impl, loop, kind, concurrency)

    pb100, pb1, pbev = (
        get("polybus", "rpc", 100),
        get("polybus", "rpc", 1),
        get("polybus", "events", 100),
    )
    if pb100 is None:
        return
    yield "RPC c=100 ops polybus/raw ≥ 0.8", ratio(pb100, get("raw", "rpc", 100)), _ge(0.8)
    yield (
        "RPC c=1 p50 polybus/raw ≤ 1.25",
        ratio(pb1, get("raw", "rpc", 1), "p50_us"),
        lambda v: v <= 1.25,
    )
    yield "events c=100 ops polybus/raw ≥ 0.8", ratio(pbev, get("raw", "events", 100)), _ge(0.8)
    if supports("faststream", transport, "rpc"):
        yield (
            "RPC c=100 ops polybus/FastStream ≥ 3",
            ratio(pb100, get("faststream", "rpc", 100)),
            _ge(3),
        )
    nest = ratio(pb100, get("nest", "rpc", 100))
    if transport == "rabbitmq":
        yield "RPC c=100 ops polybus/NestJS (no target)", nest, None
    else:
        yield "RPC c=100 ops polybus/NestJS ≥ 1", nest, _ge(1)


def _ge(bound: float) -> Any:
    return lambda value: value >= bound


def main(options: Options) -> None:
    started = time.perf_counter()
    info = versions()
    cells = asyncio.run(run_matrix(options))
    path = write_results(cells, options, info)
    report = markdown(cells, options, info, time.perf_counter() - started)
    (options.out / "latest.md").write_text(report)
    print(report)
    print(f"JSON lines: {path}", file=sys.stderr)
