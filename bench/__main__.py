"""``python -m bench``: polybus vs raw client libraries vs FastStream vs NestJS.

Examples::

    python -m bench                         # every transport with a broker up, uvloop
    python -m bench --quick --transports tcp,redis
    python -m bench --loop both             # each Python cell with uvloop and asyncio
    python -m bench --memory                # the memory check (bench/memory.py)
    python -m bench --profile tcp,redis     # py-spy profiles of polybus RPC c=100
    python -m bench --floor                 # Python cost per message, in one process
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import runner
from .common import Plan


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--transports", default=",".join(runner.TRANSPORTS), help="comma-separated list"
    )
    parser.add_argument(
        "--impls", help="comma-separated list (default: all; polybus with --profile)"
    )
    parser.add_argument(
        "--scenarios",
        help="comma-separated: rpc<concurrency> or events<concurrency> "
        "(default: rpc1,rpc100,events100; rpc100 with --profile)",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--loop", choices=("uvloop", "asyncio", "both"), default="uvloop")
    loop.add_argument("--uvloop", dest="loop", action="store_const", const="uvloop")
    loop.add_argument("--no-uvloop", dest="loop", action="store_const", const="asyncio")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per cell")
    parser.add_argument("--runs", type=int, help="measured runs per cell")
    parser.add_argument("--duration", type=float, help="seconds per measured run")
    parser.add_argument("--memory", action="store_true", help="run the memory check instead")
    parser.add_argument("--profile", metavar="TRANSPORTS", help="profile polybus on these instead")
    parser.add_argument(
        "--floor", action="store_true", help="measure the Python cost per message instead"
    )
    parser.add_argument(
        "--middleware",
        default="",
        help="with --floor: also measure these middleware sets (bench/middleware.py), "
        "comma-separated, against none",
    )
    return parser.parse_args(argv)


def scenario(text: str) -> tuple[str, int]:
    kind = text.rstrip("0123456789")
    if kind not in ("rpc", "events") or kind == text:
        raise SystemExit(f"bad scenario {text!r}: use rpc<N> or events<N>")
    return kind, int(text[len(kind) :])


def main(argv: list[str]) -> None:
    args = parse(argv)
    args.impls_given = args.impls is not None
    profiled = args.scenarios or "rpc100"
    if args.scenarios is None:
        args.scenarios = "rpc1,rpc100,events100"
    if args.impls is None:
        args.impls = ",".join(runner.IMPLS)
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if args.floor:
        from . import floor

        middleware = [m.strip() for m in args.middleware.split(",") if m.strip()]
        floor.main("asyncio" if args.loop == "asyncio" else "uvloop", args.out, middleware)
        return
    if args.memory:
        from . import memory

        memory.main(transports, args.out)
        return
    if args.profile:
        from . import profile

        impls = (
            tuple(i.strip() for i in args.impls.split(",")) if args.impls_given else ("polybus",)
        )
        profile.main(
            [t.strip() for t in args.profile.split(",")],
            args.out,
            args.loop,
            impls,
            [scenario(s.strip()) for s in profiled.split(",") if s.strip()],
        )
        return
    base = runner.QUICK if args.quick else runner.FULL
    plan = Plan(
        warmup=base.warmup if args.warmup is None else args.warmup,
        runs=base.runs if args.runs is None else args.runs,
        duration=base.duration if args.duration is None else args.duration,
    )
    runner.main(
        runner.Options(
            transports=transports,
            impls=[i.strip() for i in args.impls.split(",") if i.strip()],
            loops=["uvloop", "asyncio"] if args.loop == "both" else [args.loop],
            plan=plan,
            out=args.out,
            scenarios=[scenario(s.strip()) for s in args.scenarios.split(",") if s.strip()],
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
