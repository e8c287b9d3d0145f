"""Throwaway broker processes for the tests that stop and start one (never a shared broker)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateProcess:
    """A broker process listening on ``port`` of 127.0.0.1, stopped and started at will."""

    def __init__(self, command: list[str], port: int, *, within: float = 20) -> None:
        self.command = command
        self.port = port
        self.within = within
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and return once its port accepts connections."""
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.within
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"private {self.command[0]} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
