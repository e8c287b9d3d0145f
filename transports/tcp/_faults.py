"""Fault injection for the fault suite (polybus.testing.injection): raw frames from a
foreign peer, and the server aborting every connection (on TCP the server is the broker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from polybus.testing.injection import FaultInjection

from ._server import TcpServerTransport

__all__ = ["TcpFaults"]


class TcpFaults(FaultInjection):
    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        """Each payload as one ``<length>#<payload>`` frame on a connection of its own."""
        parts = urlsplit(url)
        for payload in payloads:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(parts.hostname, parts.port)
                writer.write(b"%d#%b" % (len(payload), payload))
                await writer.drain()
                writer.close()

    async def cut_server(self, transport: Any) -> bool:
        if not isinstance(transport, TcpServerTransport):
            return False
        for conn in list(transport._connections):
            if conn.transport is not None:
                conn.transport.abort()
        return True
