"""A/B a change to polybus before making it: ``python -m bench.ab PATCH.py [options]``.

``PATCH.py`` monkeypatches polybus (it runs first in every benchmark process, see
``BENCH_PATCH`` in ``bench/worker.py``). Baseline and patched polybus cells run
alternately ``--rounds`` times on the same machine, and the medians over the rounds of
each cell's median ops/s, p50 and CPU per op are compared: alternating keeps the noise of
a shared machine from landing on one side only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from pathlib import Path

from . import runner
from .common import Plan


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("patch", type=Path)
    parser.add_argument("--transports", default="tcp")
    parser.add_argument("--scenarios", default="rpc1,rpc100,events100")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ab")
    args = parser.parse_args()
    from .__main__ import scenario

    options = runner.Options(
        transports=args.transports.split(","),
        impls=["polybus"],
        loops=[args.loop],
        plan=Plan(warmup=0.5, runs=3, duration=1.0),
        out=args.out,
        scenarios=[scenario(s) for s in args.scenarios.split(",")],
    )
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for side, patch in (("base", ""), ("patched", str(args.patch.resolve()))):
            os.environ["BENCH_PATCH"] = patch
            for cell in asyncio.run(runner.run_matrix(options)):
                figures = {
                    "ops": cell.median("ops") or 0.0,
                    "p50": cell.median("p50_us") or 0.0,
                    "cpu": (cell.median("client_cpu_us") or 0.0)
                    + (cell.median("server_cpu_us") or 0.0),
                }
                results.setdefault((cell.transport, cell.key, side), []).append(figures)
    print(f"# A/B: {args.patch.name}, {args.rounds} rounds, {args.loop}\n")
    print("| transport | scenario | ops/s base → patched | p50 µs | CPU µs/op (client+server) |")
    print("|---|---|---|---|---|")
    for transport, key, side in results:
        if side != "base":
            continue
        base = results[(transport, key, "base")]
        new = results.get((transport, key, "patched"), [])
        cells = []
        for name in ("ops", "p50", "cpu"):
            a = statistics.median(r[name] for r in base)
            b = statistics.median(r[name] for r in new) if new else float("nan")
            cells.append(f"{a:,.1f} → {b:,.1f} ({(b / a - 1) * 100:+.0f}%)" if a else "—")
        print(f"| {transport} | {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
