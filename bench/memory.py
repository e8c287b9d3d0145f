"""Memory check (``python -m bench.memory`` or ``python -m bench --memory``), polybus only.

Per transport, against a server in its own process whose handler sleeps:

1. **burst**: 10,000 requests in flight at once (one ``gather``); afterwards the client's
   RSS and tracemalloc are back near where they were after a warm-up, ``pending_count``
   is 0 and no adapter container (reply channels, in-flight maps, subscriptions) kept
   entries. Every dict/set/list/deque reachable from the client transport's attributes
   (two levels deep) is listed when it grew.
2. **steady**: 60 s at a steady request rate, client and server RSS sampled every 5 s;
   the growth from the first sample to the last should be about zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import runpy
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from polybus import ClientProxy, Microservice, create_client

from . import runner
from .common import PAYLOAD, Config, install_loop
from .impl_polybus import target

BURST = 10_000
ROUNDS = 3
SLOW_S = 1.0
"""How long the slow handler sleeps."""
STEADY_S = 60.0
SAMPLE_S = 5.0
LAGGARD_S = 25.0
"""How long the one slow request of the steady run takes (the default timeout is 30 s)."""
STEADY_RATE = 1_000
"""Requests per second in the steady run (sent in ticks of 10 ms, replies not awaited
before the next tick; the rate is low enough for every transport to keep up)."""


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- server (its own process) ------------------------------------------------------------------


async def serve(cfg: Config) -> None:
    url, options = target(cfg)
    app = Microservice(url, max_concurrency=BURST * 2, **options)

    @app.message_pattern(cfg.rpc)
    async def slow_total(data: Any) -> int:
        await asyncio.sleep(data.get("sleep", 0))
        return sum(data["a"])

    async with app:
        print("READY 0", flush=True)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip() == b"stats":
                print(json.dumps({"in_flight": app.in_flight, "rss_kib": rss_kib()}), flush=True)


@contextlib.asynccontextmanager
async def server_process(cfg: Config) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory",
        "--serve",
        cfg.to_json(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=runner.ROOT,
    )
    try:
        assert proc.stdout is not None
        if not (await asyncio.wait_for(runner.ready(proc.stdout), 60)).startswith(b"READY"):
            raise RuntimeError("memory server did not start")
        yield proc
    finally:
        await runner.stop_process(proc)


async def server_stats(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"stats\n")
    return dict(json.loads(await proc.stdout.readline()))


# -- client side ---------------------------------------------------------------------------------


def containers(obj: Any, path: str = "transport", depth: int = 2) -> dict[str, int]:
    """Sizes of the dicts/sets/lists/deques reachable from ``obj``'s attributes."""
    sizes: dict[str, int] = {}
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names += [n for n in getattr(cls, "__slots__", ()) if n not in names]
    for name in names:
        value = getattr(obj, name, None)
        where = f"{path}.{name}"
        if isinstance(value, (dict, set, list, deque)):
            sizes[where] = len(value)
            if isinstance(value, dict) and depth:
                for key, item in list(value.items())[:5]:
                    if type(item).__module__.startswith("polybus"):
                        sizes.update(containers(item, f"{where}[{key!r}]", depth - 1))
        elif depth and type(value).__module__.startswith("polybus"):
            sizes.update(containers(value, where, depth - 1))
    return sizes


async def burst(client: ClientProxy, cfg: Config, settle_s: float) -> dict[str, Any]:
    """Three bursts of 10,000 slow requests at once. Memory is measured after a warm-up,
    after the first burst (what the process keeps: grown dict tables, free lists, pymalloc
    arenas) and after each later one, which must add nothing."""
    slow = {**PAYLOAD, "sleep": SLOW_S}
    await asyncio.gather(*(client.send(cfg.rpc, slow) for _ in range(200)))  # warm-up
    await asyncio.sleep(settle_s)
    marks = [measure()]
    snapshots = [tracemalloc.take_snapshot()]
    sizes_before = containers(client.transport)
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        calls = [
            asyncio.ensure_future(client.send(cfg.rpc, slow, timeout=120)) for _ in range(BURST)
        ]
        await asyncio.sleep(SLOW_S / 2)
        peak = {"pending": client.pending_count, "rss_kib": rss_kib()}
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        rounds.append(
            {
                "seconds": round(time.perf_counter() - started, 2),
                "errors": len(errors),
                "first_error": repr(errors[0]) if errors else None,
                "peak_pending": peak["pending"],
                "peak_rss_kib": peak["rss_kib"],
            }
        )
        del calls, results, errors
        await asyncio.sleep(settle_s)  # e.g. Redis keeps an idle reply subscription 1 s
        marks.append(measure())
        snapshots.append(tracemalloc.take_snapshot())
    sizes_after = containers(client.transport)
    grown = {
        k: (sizes_before.get(k, 0), v) for k, v in sizes_after.items() if v > sizes_before.get(k, 0)
    }
    return {
        "requests": BURST,
        "rounds": rounds,
        "pending_after": client.pending_count,
        "rss_kib": [m["rss_kib"] for m in marks],
        "traced_kib": [m["traced_kib"] for m in marks],
        "kept_by_first_burst": top_growth(snapshots[0], snapshots[1]),
        "grown_by_later_bursts": top_growth(snapshots[1], snapshots[-1]),
        "containers_grown": grown,
        "containers_after": {k: v for k, v in sizes_after.items() if v},
    }


def measure() -> dict[str, int]:
    """RSS after a full collection and ``malloc_trim`` (memory freed but still held by the
    C allocator is not what a leak check is after), and what tracemalloc sees."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"rss_kib": rss_kib(), "traced_kib": tracemalloc.get_traced_memory()[0] // 1024}


def top_growth(old: tracemalloc.Snapshot, new: tracemalloc.Snapshot, limit: int = 3) -> list[str]:
    stats = new.compare_to(old, "lineno")
    return [
        f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno} "
        f"{s.size_diff / 1024:+.0f} KiB ({s.count_diff:+d})"
        for s in stats[:limit]
        if s.size_diff > 0
    ]


async def steady(
    client: ClientProxy, cfg: Config, server: asyncio.subprocess.Process, seconds: float
) -> dict[str, Any]:
    """Requests at ``STEADY_RATE``/s for ``seconds``; RSS of both sides every 5 s. One
    request whose handler sleeps ``LAGGARD_S`` (within the default timeout, like the fast
    ones) is started first: a slow call must not make the client keep the state of the
    fast calls that finish after it started."""
    laggard = asyncio.ensure_future(client.send(cfg.rpc, {**PAYLOAD, "sleep": LAGGARD_S}))
    samples: list[dict[str, Any]] = []
    inflight: set[asyncio.Future[Any]] = set()
    errors = 0
    sent = 0
    tick = 0.01
    per_tick = max(1, int(STEADY_RATE * tick))
    started = time.perf_counter()
    next_sample = started

    def done(fut: asyncio.Future[Any]) -> None:
        nonlocal errors
        inflight.discard(fut)
        if fut.exception() is not None:
            errors += 1

    while (now := time.perf_counter()) - started < seconds:
        if now >= next_sample:
            gc.collect()
            samples.append(
                {
                    "t": round(now - started, 1),
                    "client_rss_kib": rss_kib(),
                    "client_traced_kib": tracemalloc.get_traced_memory()[0] // 1024,
                    "server_rss_kib": rss_kib(server.pid),
                    "in_flight": len(inflight),
                }
            )
            next_sample += SAMPLE_S
        for _ in range(per_tick):
            fut = asyncio.ensure_future(client.send(cfg.rpc, PAYLOAD))
            inflight.add(fut)
            fut.add_done_callback(done)
            sent += 1
        await asyncio.sleep(max(0.0, started + sent / STEADY_RATE - time.perf_counter()))
    if inflight:
        await asyncio.wait(inflight, timeout=30)
    laggard_result = await asyncio.wait_for(laggard, 60)
    gc.collect()
    samples.append(
        {
            "t": round(time.perf_counter() - started, 1),
            "client_rss_kib": rss_kib(),
            "client_traced_kib": tracemalloc.get_traced_memory()[0] // 1024,
            "server_rss_kib": rss_kib(server.pid),
            "in_flight": len(inflight),
        }
    )
    first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    return {
        "rate": STEADY_RATE,
        "sent": sent,
        "errors": errors,
        "samples": samples,
        "client_growth_kib": last["client_rss_kib"] - first["client_rss_kib"],
        "client_traced_peak_growth_kib": max(x["client_traced_kib"] for x in samples)
        - samples[0]["client_traced_kib"],
        "server_growth_kib": last["server_rss_kib"] - first["server_rss_kib"],
        "pending_after": client.pending_count,
        "laggard_ok": laggard_result == 6,
    }


async def check(transport: str, steady_s: float) -> dict[str, Any]:
    cfg = Config(
        impl="polybus",
        transport=transport,
        prefix=f"m{os.urandom(3).hex()}",
        tcp_port=runner.free_port(),
        loop="asyncio",
    )
    await runner.hook(cfg, "prepare")
    try:
        async with server_process(cfg) as server:
            url, options = target(cfg)
            async with create_client(url, **options) as client:
                await client.send(cfg.rpc, PAYLOAD, timeout=60)  # connected and subscribed
                tracemalloc.start()
                result = {"transport": transport, "burst": await burst(client, cfg, 2.0)}
                result["server_after_burst"] = await server_stats(server)
                result["steady"] = await steady(client, cfg, server, steady_s)
                tracemalloc.stop()
                result["server_after_steady"] = await server_stats(server)
            return result
    finally:
        await runner.hook(cfg, "cleanup")


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        f"# polybus memory check: {BURST:,} requests in flight at once (handler sleeps "
        f"{SLOW_S:g} s), {ROUNDS} times; then {STEADY_RATE}/s steady",
        "",
        "Client RSS (after gc + malloc_trim) and tracemalloc: after warm-up → after each "
        "burst. 'Later bursts added': tracemalloc growth from burst 1 to the last.",
        "",
        "| transport | burst s | errors | peak pending | pending after | client RSS MiB "
        "| tracemalloc KiB | later bursts added | containers grown | server in-flight "
        "| steady RSS growth client / server KiB | steady errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['transport']} | error: {r['error']} |" + " |" * 10)
            continue
        b, s = r["burst"], r["steady"]
        rounds = b["rounds"]
        lines.append(
            f"| {r['transport']} | {' / '.join(str(x['seconds']) for x in rounds)} "
            f"| {sum(x['errors'] for x in rounds)} | {max(x['peak_pending'] for x in rounds):,} "
            f"| {b['pending_after']} | {' → '.join(f'{v / 1024:.1f}' for v in b['rss_kib'])} "
            f"| {' → '.join(f'{v:,}' for v in b['traced_kib'])} "
            f"| {'; '.join(b['grown_by_later_bursts']) or 'nothing'} "
            f"| {b['containers_grown'] or 'none'} | {r['server_after_burst']['in_flight']} "
            f"| {s['client_growth_kib']:+,} / {s['server_growth_kib']:+,} | {s['errors']} |"
        )
    lines += ["", "Kept by the first burst (tracemalloc, top 3):", ""]
    for r in results:
        if "burst" in r:
            lines.append(f"- {r['transport']}: {'; '.join(r['burst']['kept_by_first_burst'])}")
    lines += [
        "",
        f"Steady run, every 5 s: client tracemalloc MiB / client RSS MiB / server RSS MiB "
        f"(one request sleeping {LAGGARD_S:g} s started first):",
        "",
    ]
    for r in results:
        if "steady" in r:
            series = "  ".join(
                f"{x['client_traced_kib'] / 1024:.1f}/{x['client_rss_kib'] / 1024:.1f}/"
                f"{x['server_rss_kib'] / 1024:.1f}"
                for x in r["steady"]["samples"]
            )
            lines.append(f"- {r['transport']}: {series}")
    return "\n".join(lines) + "\n"


async def run(transports: list[str], steady_s: float) -> list[dict[str, Any]]:
    """Each transport's client in a fresh process, so no figure carries over."""
    results = []
    for transport in transports:
        reason = runner.available(transport)
        if reason or not runner.adapter_ready(transport):
            print(
                f"## {transport}: skipped ({reason or 'adapter not importable'})", file=sys.stderr
            )
            continue
        print(f"## {transport} ...", file=sys.stderr, flush=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.memory",
            "--check",
            transport,
            str(steady_s),
            stdout=asyncio.subprocess.PIPE,
            cwd=runner.ROOT,
        )
        out, _ = await proc.communicate()
        try:
            result = json.loads(out.splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"transport": transport, "error": f"check exited {proc.returncode}"}
        print(f"   {json.dumps(result)[:300]}", file=sys.stderr, flush=True)
        results.append(result)
    return results


async def check_main(transport: str, steady_s: float) -> None:
    try:
        result = await check(transport, steady_s)
    except Exception as exc:
        result = {"transport": transport, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


def main(transports: list[str], out: Path, steady_s: float = STEADY_S) -> None:
    results = asyncio.run(run(transports, steady_s))
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with (out / f"memory-{stamp}.jsonl").open("w") as fh:
        for result in results:
            fh.write(json.dumps(result) + "\n")
    text = report(results)
    (out / "memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    if os.environ.get("BENCH_PATCH"):  # experiment knob, as in bench/worker.py
        runpy.run_path(os.environ["BENCH_PATCH"], run_name="bench_patch")
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        config = Config.from_json(sys.argv[2])
        install_loop(config.loop)
        asyncio.run(serve(config))
    elif len(sys.argv) > 3 and sys.argv[1] == "--check":
        asyncio.run(check_main(sys.argv[2], float(sys.argv[3])))
    else:
        parser = argparse.ArgumentParser(prog="python -m bench.memory")
        parser.add_argument("--transports", default=",".join(runner.TRANSPORTS))
        parser.add_argument("--steady-seconds", type=float, default=STEADY_S)
        parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
        args = parser.parse_args()
        main([t for t in args.transports.split(",") if t], args.out, args.steady_seconds)
