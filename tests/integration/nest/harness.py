"""Drive the real NestJS 12 side of the interop tests (server.mjs / client.mjs).

Import by path (tests/integration is not a package)::

    sys.path.insert(0, str(Path(__file__).parent / "nest"))
    from harness import node_available, run_nest_client, start_nest_server

Usage::

    async with start_nest_server("REDIS", {"NEST_PREFIX": prefix}) as server:
        ...                                    # call it from Python
        events = await server.wait_for_events(1)

    result = await run_nest_client("NATS", {"NEST_PREFIX": prefix})
    # {"sum": 10, "stream": [1, 2, 3], "fail": {...}, "emitted": True}

``start_nest_server`` returns a ``NestServer``: use it with ``async with``, or
``server = await start_nest_server(...)`` followed by ``await server.stop()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

NEST_DIR: Path = Path(__file__).resolve().parent
TRANSPORTS = ("TCP", "REDIS", "NATS", "RMQ", "KAFKA", "MQTT")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_STDERR_TAIL_LINES = 200


class NestHarnessError(RuntimeError):
    """The Node side failed to start, answer or exit as expected."""


def _node_bin() -> str | None:
    return os.environ.get("NODE_BIN") or shutil.which("node")


ORDER = {"orderId": "ord_42", "amount": 1999}
"""The event payload the interop tests send both ways."""


def node_available() -> str | None:
    """Return why the Nest side cannot run (a skip reason), or None if it can."""
    if _node_bin() is None:
        return "node is not installed (or set NODE_BIN)"
    if not (NEST_DIR / "node_modules" / "@nestjs" / "microservices").is_dir():
        return f"NestJS packages are not installed: run `npm ci` in {NEST_DIR}"
    return None


def unique_prefix() -> str:
    """A fresh NEST_PREFIX, valid for every transport (Kafka topics included)."""
    return f"pb{uuid.uuid4().hex[:12]}_"


async def wait_until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def first_answer(call: Callable[[], Awaitable[Any]], attempts: int = 12) -> Any:
    """The first answer of ``call`` that does not time out (the last attempt's error else).

    A NestJS Kafka service says READY once kafkajs's consumer runs, which can be before its
    group has partitions, and never reads what was produced before then (kafkajs starts at
    the log's end): ask until it answers."""
    from polybus import RequestTimeout

    for _ in range(attempts - 1):
        try:
            return await call()
        except RequestTimeout:
            continue
    return await call()


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for NEST_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port (e.g. Kafka on 19092)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def otel_env(spans: Path) -> dict[str, str]:
    """Env for a NestJS side traced by the OpenTelemetry JS SDK with the kafkajs and
    amqplib instrumentations (``otel.mjs``); its spans go to ``spans`` (see read_spans)."""
    preload = (NEST_DIR / "otel.mjs").as_uri()
    return {"NEST_OTEL_SPANS": str(spans), "NODE_OPTIONS": f"--import={preload}"}


def read_spans(spans: Path) -> list[dict[str, Any]]:
    """The spans a NestJS side started with otel_env() has ended so far: dicts with
    ``traceId``, ``spanId``, ``parentSpanId`` (hex, None for a root), ``name``, ``kind``
    (``"PRODUCER"``...), ``attributes``."""
    if not spans.exists():
        return []
    return [json.loads(line) for line in spans.read_text().splitlines() if line]


def _child_env(transport: str, env: Mapping[str, str]) -> dict[str, str]:
    name = transport.upper()
    if name not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    return {**os.environ, **env, "NEST_TRANSPORT": name}


def _require_node() -> str:
    reason = node_available()
    node = _node_bin()
    if reason is not None or node is None:
        raise NestHarnessError(reason or "node is not available")
    return node


class NestServer:
    """A running ``node server.mjs``; an async context manager and awaitable."""

    def __init__(self, transport: str, env: Mapping[str, str]) -> None:
        self.transport = transport.upper()
        self.env = dict(env)
        self.events: list[dict[str, Any]] = []
        self.other_stdout: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> NestServer:
        """Spawn server.mjs and wait until it prints READY. Idempotent."""
        if self.process is not None:
            return self
        node = _require_node()
        self.process = await asyncio.create_subprocess_exec(
            node,
            "server.mjs",
            cwd=NEST_DIR,
            env=_child_env(self.transport, self.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read_stdout(self.process.stdout)),
            asyncio.create_task(self._read_stderr(self.process.stderr)),
        ]
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self.process.wait())
        try:
            await asyncio.wait(
                {ready, exited}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (ready, exited):
                task.cancel()
        if not self._ready.is_set():
            returncode = self.process.returncode
            await self.stop()
            why = (
                f"exited with code {returncode}"
                if returncode is not None
                else f"did not print READY within {READY_TIMEOUT:.0f} s"
            )
            raise NestHarnessError(
                f"Nest {self.transport} server {why}; stderr tail:\n{self.stderr_tail()}"
            )
        return self

    async def stop(self) -> int | None:
        """SIGTERM the server (SIGKILL after STOP_TIMEOUT); return its exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        # The pipes reach EOF once the process is gone.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return proc.returncode

    async def __aenter__(self) -> NestServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __await__(self) -> Generator[Any, None, NestServer]:
        return self.start().__await__()

    # -- output ------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def stderr_tail(self, lines: int = 50) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    async def wait_for_events(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least n event lines arrived; return all events so far."""

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: len(self.events) >= n or self.returncode is not None
                )

        try:
            await asyncio.wait_for(enough(), timeout)
        except asyncio.TimeoutError:
            raise NestHarnessError(
                f"expected {n} event(s) from the Nest {self.transport} server within "
                f"{timeout} s, got {len(self.events)}: {self.events!r}; stderr tail:\n"
                f"{self.stderr_tail()}"
            ) from None
        if len(self.events) < n:
            raise NestHarnessError(
                f"Nest {self.transport} server exited ({self.returncode}) after "
                f"{len(self.events)} event(s); stderr tail:\n{self.stderr_tail()}"
            )
        return list(self.events)

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            async for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                if line == "READY":
                    self._ready.set()
                    continue
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
                async with self._changed:
                    if isinstance(parsed, dict) and "event" in parsed:
                        self.events.append(parsed)
                    else:
                        self.other_stdout.append(line)
                    self._changed.notify_all()
        finally:
            # Wake waiters so they notice the process is gone.
            if self.process is not None:
                await self.process.wait()
            async with self._changed:
                self._changed.notify_all()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))


def start_nest_server(transport: str, env: Mapping[str, str]) -> NestServer:
    """A Nest microservice for `transport` (TCP|REDIS|NATS|RMQ|KAFKA|MQTT).

    ``async with start_nest_server(...) as server`` or
    ``server = await start_nest_server(...)`` (then ``await server.stop()``).
    ``env`` holds the NEST_* variables (NEST_PREFIX, NEST_PORT, NEST_URL, ...);
    NEST_TRANSPORT is set from `transport`.
    """
    return NestServer(transport, env)


async def run_nest_client(
    transport: str, env: Mapping[str, str], timeout: float = 60
) -> dict[str, Any]:
    """Run client.mjs against a server and return its JSON result line."""
    node = _require_node()
    proc = await asyncio.create_subprocess_exec(
        node,
        "client.mjs",
        cwd=NEST_DIR,
        env=_child_env(transport, env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        out, err = await proc.communicate()
        raise NestHarnessError(
            f"Nest {transport} client did not finish within {timeout} s; stderr:\n{_tail(err)}"
        ) from None
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    result: Any = None
    if lines:
        with contextlib.suppress(ValueError):
            result = json.loads(lines[-1])
    if proc.returncode != 0 or not isinstance(result, dict) or "error" in result:
        raise NestHarnessError(
            f"Nest {transport} client failed (exit {proc.returncode}): "
            f"{lines[-1] if lines else '<no output>'}; stderr:\n{_tail(err)}"
        )
    return result


def _tail(data: bytes, lines: int = 50) -> str:
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
