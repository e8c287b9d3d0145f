"""One benchmark process: ``python -m bench.worker server|client '<config json>'``.

The server prints ``READY <control port>`` once it is receiving and serves until SIGTERM
or SIGINT; the client prints one JSON line per scenario and exits.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import runpy
import signal
import sys
from types import ModuleType

from .common import GC, Config, Counter, control_server, drive, install_loop


def implementation(cfg: Config) -> ModuleType:
    name = f"raw_{cfg.transport}" if cfg.impl == "raw" else f"impl_{cfg.impl}"
    return importlib.import_module(f"bench.{name}")


async def run_server(cfg: Config) -> None:
    module = implementation(cfg)
    counter = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gc_before = GC.snapshot()
    async with module.serve(cfg, counter.hit), control_server(counter) as port:
        print(f"READY {port}", flush=True)
        await stop.wait()
    print("gc-stats " + json.dumps(GC.since(gc_before)), file=sys.stderr, flush=True)


async def run_client(cfg: Config) -> None:
    module = implementation(cfg)
    async for result in drive(cfg, module.connect):
        print(json.dumps(result), flush=True)


def main() -> None:
    """Experiment knobs (every figure in the report is taken without them):
    ``BENCH_GC=off`` or ``freeze`` (gc.freeze() before the event loop starts), and
    ``BENCH_PATCH=file.py``, run first in both processes (e.g. to try a change to polybus
    by monkeypatching it before editing the package)."""
    role, text = sys.argv[1], sys.argv[2]
    patch = os.environ.get("BENCH_PATCH")
    if patch:
        runpy.run_path(patch, run_name="bench_patch")
    mode = os.environ.get("BENCH_GC")
    if mode == "off":
        gc.disable()
    elif mode == "freeze":
        gc.collect()
        gc.freeze()
    cfg = Config.from_json(text)
    install_loop(cfg.loop)
    asyncio.run(run_server(cfg) if role == "server" else run_client(cfg))


if __name__ == "__main__":
    main()
