"""Fault injection: what a transport's own package offers the fault suite.

The suite (:mod:`polybus.testing.faults`) knows no broker. A transport that wants its
fault cases to do more than restart a broker gives its :class:`~polybus.plugins.
TransportPlugin` a ``faults`` object, a subclass of :class:`FaultInjection` overriding
what its broker allows: publishing raw bytes where a server listens (as a foreign peer
would), cutting a client's connections the broker's way, counting what is left in a
queue, recognising the broker's answer on its port. What it leaves out, the suite skips
with the reason or does the generic way (a socket shutdown).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

__all__ = ["Cut", "FaultInjection", "probe_port", "probe_port_async"]

Cut = tuple[str, Callable[[], Awaitable[None]]]
"""How a cut is done (its name, for the figures) and the coroutine function doing it."""


class FaultInjection:
    """The defaults: nothing injected, cuts by socket shutdown, no queue, any answer."""

    greeting: bytes = b""
    """Bytes to send to the broker's port to make it answer (``answers`` checks)."""

    def answers(self, data: bytes) -> bool:
        """Whether ``data``, read after sending :attr:`greeting`, is the broker's answer."""
        return True

    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        """Deliver each payload, unchanged, where a server of ``url`` (with the service
        ``options`` the suite gave it, e.g. its queue) listens for ``route``."""
        raise NotImplementedError

    async def prepare_cut(self, url: str, local_ports: Collection[int]) -> Cut | None:
        """How to cut this process's connections to the broker (from ``local_ports``) the
        broker's own way; ``None``: the suite shuts the sockets down."""
        return None

    async def cut_server(self, transport: Any) -> bool:
        """Cut every connection of a server transport that is itself the broker (TCP);
        False when the transport has none to cut."""
        return False

    async def queue_depth(self, url: str, options: Mapping[str, Any]) -> int | None:
        """Messages still waiting for the service (``None`` where there is no queue)."""
        return None


def probe_port(host: str, port: int, injection: FaultInjection, timeout: float = 2.0) -> bool:
    """True when something on ``host:port`` answers as the broker would."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if injection.greeting:
                sock.sendall(injection.greeting)
            data = b""
            end = time.monotonic() + timeout
            while time.monotonic() < end and len(data) < 8:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
                if injection.answers(data):
                    return True
            return injection.answers(data)
    except OSError:
        return False


async def probe_port_async(host: str, port: int, injection: FaultInjection) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, probe_port, host, port, injection)
