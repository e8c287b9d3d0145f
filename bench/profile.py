"""Where polybus spends its time (``python -m bench --profile tcp,... [--scenarios rpc1]``).

Per transport and scenario (RPC at concurrency 100 unless ``--scenarios`` says otherwise):
the server and client (polybus, or ``--impls`` given) run as in the benchmark; once warm, py-spy
samples both processes (``--nonblocking``, 250 Hz, CPU time only) for a few seconds. The
report gives, per side, the share of samples by layer (polybus core, the adapter, the
broker's client library, asyncio, ...) and the functions with the most own time and the
most inclusive time. Raw py-spy output is kept under ``<out>/profiles/``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import runner
from .common import Config, Plan

RATE = 250
SECONDS = 6.0
LAYERS = (
    ("pydantic", "pydantic"),
    ("event loop (C: uvloop / selector, socket I/O)", "asyncio/runners.py"),
    ("polybus core", "core/"),
    ("polybus adapter", "transports/"),
    ("bench driver", "bench/"),
    ("redis-py", "redis/"),
    ("nats-py", "nats/"),
    ("aio-pika/aiormq/pamqp", "aiormq/"),
    ("aio-pika/aiormq/pamqp", "aio_pika/"),
    ("aio-pika/aiormq/pamqp", "pamqp/"),
    ("aiokafka", "aiokafka/"),
    ("asyncio (Python)", "asyncio/"),
)


def layer(frame: str) -> str:
    where = frame.partition(" (")[2]
    for name, marker in LAYERS:
        if where.startswith(marker) or f"/{marker}" in where:
            return name
    return "other"


def parse(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy ``--format raw``: one ``frame;frame;...;leaf count`` line per stack."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = tuple(f for f in stack.split(";") if not f.startswith("process "))
            stacks[frames] += int(count)
    return stacks


def short(frame: str) -> str:
    """``func (path/to/file.py:12)`` → ``func (file.py:12)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def summarize(stacks: Counter[tuple[str, ...]], top: int = 12) -> list[str]:
    total = sum(stacks.values()) or 1
    layers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    lines_own: Counter[str] = Counter()
    for frames, count in stacks.items():
        if not frames:
            continue
        leaf = frames[-1]
        # A C call made from Python (orjson, a socket write) is charged to the calling
        # line, and so is a garbage collection triggered by an allocation there.
        layers[layer(leaf)] += count
        own[short(leaf).split(":")[0] + ")"] += count
        lines_own[short(leaf)] += count
        for name in {short(f).split(":")[0] + ")" for f in frames}:
            inclusive[name] += count
    lines = [f"{total} samples ({total / RATE:.1f} CPU-s at {RATE} Hz)", ""]
    lines.append(
        "By layer (own time): "
        + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in layers.most_common())
    )
    lines += ["", "| own % | function | | incl. % | function |", "|---|---|---|---|---|"]
    own_top = own.most_common(top)
    incl_top = [(n, c) for n, c in inclusive.most_common(top + 8) if "<module>" not in n][:top]
    for i in range(top):
        left = own_top[i] if i < len(own_top) else ("", 0)
        right = incl_top[i] if i < len(incl_top) else ("", 0)
        lines.append(
            f"| {100 * left[1] / total:.1f} | `{left[0]}` | | "
            f"{100 * right[1] / total:.1f} | `{right[0]}` |"
        )
    lines += [
        "",
        "Hottest lines (own): "
        + ", ".join(f"`{name}` {100 * n / total:.1f}%" for name, n in lines_own.most_common(8)),
    ]
    return lines


async def record(pid: int, path: Path, seconds: float) -> asyncio.subprocess.Process:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return await asyncio.create_subprocess_exec(
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(RATE),
        "--duration",
        str(int(seconds)),
        *(["--nonblocking"] if os.environ.get("BENCH_PYSPY_NONBLOCKING") else []),
        "--format",
        "raw",
        "-o",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def profile(
    transport: str, out: Path, loop: str, impl: str, scenario: tuple[str, int]
) -> list[str]:
    cfg = Config(
        impl=impl,
        transport=transport,
        prefix=f"p{os.urandom(3).hex()}",
        tcp_port=runner.free_port(),
        loop=loop,
        plan=Plan(warmup=2.0, runs=1, duration=SECONDS + 2.0),
        scenarios=[scenario],
    )
    kind, concurrency = scenario
    title = f"{'RPC' if kind == 'rpc' else 'events'} c={concurrency}"
    stem = out / f"{transport}-{impl}-{loop}-{kind}{concurrency}"
    await runner.hook(cfg, "prepare")
    server = await asyncio.create_subprocess_exec(
        *runner.command("server", cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=runner.ROOT,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(runner.ready(server.stdout), 60)
        client_cfg = Config(**{**cfg.__dict__, "ctl_port": int(line.split()[1])})
        client = await asyncio.create_subprocess_exec(
            *runner.command("client", client_cfg),
            stdout=asyncio.subprocess.PIPE,
            cwd=runner.ROOT,
        )
        await asyncio.sleep(cfg.plan.warmup + 1.0)
        recorders = [
            await record(server.pid, Path(f"{stem}-server.txt"), SECONDS),
            await record(client.pid, Path(f"{stem}-client.txt"), SECONDS),
        ]
        for recorder in recorders:
            await recorder.wait()
        result, _ = await client.communicate()
    finally:
        await runner.stop_process(server)
        await runner.hook(cfg, "cleanup")
    assert server.stderr is not None
    server_gc = next(
        (
            json.loads(line[len(b"gc-stats ") :])
            for line in (await server.stderr.read()).splitlines()
            if line.startswith(b"gc-stats ")
        ),
        None,
    )
    lines = [f"## {transport} ({impl}, {loop}): {title}", ""]
    try:
        cell = json.loads(result.splitlines()[-1])
        run = cell["runs"][0]
        lines.append(
            f"While profiled: {run['ops']:,.0f} ops/s, p50 {run['p50_us']:,.0f} µs, "
            f"p99 {run['p99_us']:,.0f} µs. GC (gen0/1/2): client {gc_text(cell)} in "
            f"{cell['wall_s']} s; server {gc_text(server_gc)} over its lifetime."
        )
    except (IndexError, KeyError, json.JSONDecodeError):
        lines.append(f"Client output: {result.decode().strip()[:300]}")
    for side in ("client", "server"):
        lines += ["", f"### {side}", "", *summarize_file(Path(f"{stem}-{side}.txt"))]
    return lines


def summarize_file(path: Path) -> list[str]:
    return summarize(parse(path)) if path.exists() else ["(no samples: py-spy failed)"]


def gc_text(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "?"
    seconds = "/".join(f"{s:.2f}" for s in stats["gc_s"])
    counts = "/".join(str(c) for c in stats["gc_collections"])
    return f"{sum(stats['gc_s']):.2f} s ({seconds} s, {counts} collections)"


def main(
    transports: list[str],
    out: Path,
    loop: str,
    impls: tuple[str, ...] = ("polybus",),
    scenarios: Sequence[tuple[str, int]] = (("rpc", 100),),
) -> None:
    loops = ["uvloop", "asyncio"] if loop == "both" else [loop]
    directory = out / "profiles" / time.strftime("%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    report: list[str] = ["# polybus profiles", ""]
    for transport in transports:
        if runner.available(transport) or (
            "polybus" in impls and not runner.adapter_ready(transport)
        ):
            report += [f"## {transport}: skipped", ""]
            continue
        for scenario, impl, name in itertools.product(scenarios, impls, loops):
            print(f"## profiling {transport} {impl} {name} {scenario}", file=sys.stderr, flush=True)
            report += [*asyncio.run(profile(transport, directory, name, impl, scenario)), ""]
    text = "\n".join(report)
    (out / "profile.md").write_text(text)
    print(text)
