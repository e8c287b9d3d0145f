"""Graceful shutdown of ``polybus run`` (issue 6, property 3).

SIGTERM: the server stops taking new work (no new connections, nothing more read from
existing ones), lets in-flight handlers finish within the grace period (their replies
reach the callers), then closes every connection and exits with code 0. Handlers still
running when the grace period ends are cancelled; their callers get ``TransportError``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from polybus import ConnectionStatus, create_client
from polybus.errors import TransportError

APP = """
import asyncio
import os

from polybus import Microservice

app = Microservice(grace=float(os.environ.get("GRACE", "5")), name="shutdown-test")


@app.message_pattern("slow")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


@app.message_pattern("echo")
def echo(data):
    return data
"""


def polybus_command() -> list[str]:
    """The installed ``polybus`` script next to this interpreter, or an equivalent."""
    script = Path(sys.executable).with_name("polybus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from polybus.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"tcp://127.0.0.1:{port}"


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, within: float) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc.returncode is not None:
            raise AssertionError(f"polybus run exited early with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"polybus run did not listen on {port} within {within}s")


async def serve(tmp_path: Path, grace: float) -> Served:
    (tmp_path / "shutdown_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *polybus_command(),
        "run",
        "shutdown_app:app",
        "--url",
        f"tcp://127.0.0.1:{port}",
        cwd=tmp_path,
        env={**os.environ, "GRACE": str(grace), "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await _wait_listening(port, proc, 20)
    return Served(proc, port)


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    grace = getattr(request, "param", 5.0)
    server = await serve(tmp_path, grace)
    try:
        yield server
    finally:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


async def test_sigterm_drains_in_flight_work_and_exits_0(served: Served) -> None:
    first = create_client(served.url, timeout=15)
    second = create_client(served.url, timeout=15)
    statuses: list[ConnectionStatus] = []
    first.watch_status(statuses.append)
    try:
        assert await first.send("echo", "up") == "up"
        assert await second.send("echo", "up") == "up"
        in_flight = [asyncio.ensure_future(first.send("slow", 1.5)) for _ in range(3)]
        in_flight.append(asyncio.ensure_future(second.send("slow", 1.0)))
        await asyncio.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.2)

        # No new connections...
        late = create_client(served.url, timeout=3)
        with pytest.raises(TransportError):
            await late.send("echo", "too late")
        await late.close()
        # ...and nothing new read from the existing ones: that call never runs.
        refused = asyncio.ensure_future(first.send("echo", "new work", timeout=10))

        # In-flight handlers finish and their replies arrive.
        assert await asyncio.wait_for(asyncio.gather(*in_flight), 10) == ["finished"] * 4
        code = await asyncio.wait_for(served.proc.wait(), 10)
        took = time.monotonic() - signalled
        assert code == 0, (await served.proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert took < 4.5, f"exit {took:.1f}s after SIGTERM; in-flight work needed 1.5s"
        with pytest.raises(TransportError):  # the connection closed under it
            await asyncio.wait_for(refused, 5)
        await asyncio.sleep(0.1)
        assert statuses[-1] is ConnectionStatus.DISCONNECTED
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("served", [1.0], indirect=True)
async def test_handlers_past_the_grace_period_are_cancelled(served: Served) -> None:
    client = create_client(served.url, timeout=30)
    try:
        assert await client.send("echo", "up") == "up"
        stuck = asyncio.ensure_future(client.send("slow", 20))
        quick = asyncio.ensure_future(client.send("slow", 0.3))
        await asyncio.sleep(0.2)
        served.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await asyncio.wait_for(quick, 5) == "finished"
        with pytest.raises(TransportError):
            await asyncio.wait_for(stuck, 10)  # fails when the grace ends, not after 20 s
        code = await asyncio.wait_for(served.proc.wait(), 10)
        assert code == 0
        assert time.monotonic() - signalled < 4
        stderr = (await served.proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert "cancelled 1 handlers" in stderr
    finally:
        await client.close()


async def test_idle_server_exits_0_at_once(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert await asyncio.wait_for(served.proc.wait(), 10) == 0
    assert time.monotonic() - started < 3
