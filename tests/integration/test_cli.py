"""The ``polybus`` command as a user runs it: demo, run + conformance --external."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

POLYBUS = [sys.executable, "-m", "polybus.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_demo_prints_a_paid_invoice() -> None:
    out = subprocess.run([*POLYBUS, "demo"], capture_output=True, text=True, timeout=60, check=True)
    invoice = json.loads(out.stdout.strip().splitlines()[-1])
    assert invoice["status"] == "paid" and invoice["amount"] == 1999
    assert invoice["id"].startswith("inv_")


def test_conformance_against_a_polybus_run_server(tmp_path: Path) -> None:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*POLYBUS, "run", "polybus.testing.app:app", "--url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        result = subprocess.run(
            [*POLYBUS, "conformance", url, "--external"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env={**os.environ, "CI": ""},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        summary = result.stdout.strip().splitlines()[-1]
        passed, failed = (int(part.split()[0]) for part in summary.split(", ")[:2])
        assert passed >= 14 and failed == 0, result.stdout
    finally:
        server.terminate()
        assert server.wait(30) == 0, server.stderr.read() if server.stderr else ""
