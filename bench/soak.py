"""Soak: a steady request rate for a while per transport, with a broker restart midway.

    python -m bench.soak [--transports redis,nats,rabbitmq,kafka] [--seconds 60] [--rate 300]

Prints, per transport: requests sent, outcomes (ok / TransportError / RequestTimeout), the
outage as the client saw it (first to last failure), recovery time (broker answering again
→ first success), throughput before and after, a per-second timeline, and the client's
RSS and pending requests before and after. Loopback only; bounded in time and count.
It restarts the local brokers with the commands in ``POLYBUS_<NAME>_RESTART`` (.ci/run's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from polybus import Microservice, RequestTimeout, TransportError, create_client
from polybus.testing.brokers import local_url, restart_command
from polybus.testing.faults import run_command, wait_broker

ROOT = Path(__file__).resolve().parent.parent


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _url(name: str) -> str:
    url = local_url(name)
    if name == "rabbitmq":
        url = url.split("?", 1)[0].rstrip("/") + f"/?queue=polybus-soak-{uuid.uuid4().hex[:8]}"
    return url


async def soak(name: str, seconds: float, rate: float, timeout: float) -> dict[str, Any]:
    url = _url(name)
    route = f"soak.{uuid.uuid4().hex[:8]}.sum"
    app = Microservice(url)

    @app.message_pattern(route)
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    await app.listen()
    client = create_client(url, timeout=timeout)
    await client.send(route, [1, 2, 3])  # connected and warm
    gc.collect()
    rss_before = _rss_kib()
    timeline: dict[int, Counter[str]] = {}
    outcomes: Counter[str] = Counter()
    failures: list[float] = []
    successes_after_fault: list[float] = []
    started = time.monotonic()
    marks: dict[str, float] = {}

    async def one(i: int) -> None:
        try:
            await client.send(route, [i, 1, 2])
            kind = "ok"
        except TransportError:
            kind = "TransportError"
        except RequestTimeout:
            kind = "RequestTimeout"
        now = time.monotonic() - started
        outcomes[kind] += 1
        timeline.setdefault(int(now), Counter())[kind] += 1
        if kind != "ok":
            failures.append(now)
        elif "broker_back" in marks and not successes_after_fault:
            successes_after_fault.append(now)

    async def restart() -> None:
        await asyncio.sleep(seconds / 2)
        command = restart_command(name)
        assert command is not None, f"set POLYBUS_{name.upper()}_RESTART (see .ci/run)"
        marks["restart"] = time.monotonic() - started
        await run_command(command, cwd=ROOT)
        await wait_broker(url)
        marks["broker_back"] = time.monotonic() - started

    fault = asyncio.ensure_future(restart())
    in_flight: set[asyncio.Task[None]] = set()  # only running calls: the soak holds no history
    interval = 1.0 / rate
    i = 0
    while (elapsed := time.monotonic() - started) < seconds:
        target = i * interval
        if target > elapsed:
            await asyncio.sleep(target - elapsed)
        call = asyncio.ensure_future(one(i))
        in_flight.add(call)
        call.add_done_callback(in_flight.discard)
        i += 1
    await fault
    await asyncio.gather(*in_flight)
    await asyncio.sleep(1)
    gc.collect()
    rss_after = _rss_kib()
    pending_after = client.pending_count
    await client.close()
    await app.close()
    cleanup = getattr(app.transport, "delete_resources", None)
    if cleanup is not None:
        await cleanup()
    back = marks.get("broker_back", 0.0)
    recovered = successes_after_fault[0] if successes_after_fault else None
    before = sum(c["ok"] for s, c in timeline.items() if s < marks["restart"] - 1)
    after = sum(c["ok"] for s, c in timeline.items() if recovered and s > recovered + 1)
    after_seconds = max(1.0, seconds - (recovered or seconds) - 1)
    return {
        "transport": name,
        "seconds": seconds,
        "rate_target": rate,
        "requests": i,
        "outcomes": dict(outcomes),
        "restart_at_s": round(marks["restart"], 2),
        "broker_back_at_s": round(back, 2),
        "first_failure_s": round(min(failures), 2) if failures else None,
        "last_failure_s": round(max(failures), 2) if failures else None,
        "recovery_s": round(recovered - back, 2) if recovered is not None else None,
        "ok_per_s_before": round(before / max(1.0, marks["restart"] - 1), 1),
        "ok_per_s_after": round(after / after_seconds, 1),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "pending_after": pending_after,
        "timeline": {s: dict(c) for s, c in sorted(timeline.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", default="redis,nats,rabbitmq,kafka")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout (s)")
    args = parser.parse_args()
    for name in args.transports.split(","):
        result = asyncio.run(soak(name, args.seconds, args.rate, args.timeout))
        timeline = result.pop("timeline")
        print(json.dumps(result))
        print(
            "  per second ok/failed:",
            " ".join(
                f"{s}:{c.get('ok', 0)}/{sum(v for k, v in c.items() if k != 'ok')}"
                for s, c in timeline.items()
            ),
        )


if __name__ == "__main__":
    main()
