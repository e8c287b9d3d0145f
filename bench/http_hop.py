"""``python -m bench.http_hop``: what the HTTP hop adds to a billing call.

Serves examples/billing.py (``polybus run``) and examples/orders_http.py (``uvicorn``) as
the README says, on loopback TCP, then times the same charges twice at the same
concurrency: POST /orders/charge through uvicorn, and ``send()`` straight to billing. Prints
both rates and their ratio (HTTP / direct). The figures are of this machine at this moment:
compare the ratio, not the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from polybus import create_client

ROOT = Path(__file__).resolve().parents[1]
ORDER = {"orderId": "ord_42", "amount": 1999}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


async def _rate(calls: list[Callable[[], Awaitable[object]]], total: int) -> float:
    """Calls per second of ``total`` calls, one worker per callable (after a warm-up)."""
    for _ in range(100):
        await calls[0]()
    remaining = total

    async def worker(call: Callable[[], Awaitable[object]]) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(call) for call in calls))
    return total / (time.perf_counter() - started)


class _Connection:
    """One keep-alive HTTP/1.1 connection posting the order: a load generator far cheaper
    than an HTTP client library, so the figure is the server's, not the client's."""

    def __init__(self, port: int) -> None:
        self.port = port
        body = orjson.dumps(ORDER)
        self.request = (
            b"POST /orders/charge HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    async def open(self) -> _Connection:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def post(self) -> object:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {head!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return orjson.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


async def _rate_http(port: int, total: int, concurrency: int) -> float:
    connections = [await _Connection(port).open() for _ in range(concurrency)]
    try:
        return await _rate([connection.post for connection in connections], total)
    finally:
        for connection in connections:
            connection.close()


async def measure(billing_url: str, http_port: int, total: int, concurrency: int) -> None:
    over_http = await _rate_http(http_port, total, concurrency)
    async with create_client(billing_url) as billing:

        async def send() -> object:
            invoice = await billing.send({"cmd": "charge"}, ORDER)
            await billing.emit("order_placed", {"orderId": "ord_42", "invoice": invoice["id"]})
            return invoice

        direct = await _rate([send] * concurrency, total)
    print(f"POST /orders/charge via uvicorn: {over_http:8.0f} req/s (c={concurrency})")
    print(f"send() straight to billing:     {direct:8.0f} req/s (c={concurrency})")
    print(f"ratio HTTP / direct:            {over_http / direct:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_hop", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    billing_port, http_port = _free_port(), _free_port()
    billing_url = f"tcp://127.0.0.1:{billing_port}"
    env = {**os.environ, "POLYBUS_BILLING_URL": billing_url}
    commands = [
        [sys.executable, "-m", "polybus.cli", "run", "examples.billing:app", "--url", billing_url],
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.orders_http:app",
            "--port",
            str(http_port),
            "--no-access-log",
            "--loop",
            args.loop,
            "--log-level",
            "warning",
        ],
    ]
    processes = []
    try:
        for command, port in zip(commands, (billing_port, http_port), strict=True):
            processes.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
            )
            _wait_for(port)
        asyncio.run(measure(billing_url, http_port, args.requests, args.concurrency))
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
