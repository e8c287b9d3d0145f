"""transports/tcp/_server.py ``_ServerConnection._read``: yield every ``CHUNK`` frames.

At RPC concurrency 100 a client's 100 requests arrive in one read. Today the reader hands
all of them to the microservice before the loop turns, so all 100 replies leave in one
write and the two processes alternate: the client waits while the server works through
the batch, then the server waits while the client does. Yielding to the loop every 16
frames lets the first replies leave (and the client start on them) while the server
handles the rest: both cores work at once.
"""

from __future__ import annotations

import asyncio
import logging
import os

from polybus.errors import ProtocolError
from polybus.packets import decode_incoming
from polybus.transports.tcp import _server

CHUNK = int(os.environ.get("BENCH_CHUNK", "16"))
log = logging.getLogger("polybus.tcp")


async def _read(self: _server._ServerConnection) -> None:
    server = self._server
    serializer = server._serializer
    inbox = self._inbox
    loop = asyncio.get_running_loop()
    handled = 0
    while not self.closed.done():
        if not inbox:
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            self._wakeup = loop.create_future()
            await self._wakeup
            handled = 0
            continue
        if handled >= CHUNK:  # the change: let this chunk's replies go out first
            handled = 0
            await asyncio.sleep(0)
            continue
        handled += 1
        body = inbox.popleft()
        try:
            incoming = decode_incoming(serializer, body)
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", self.peer, exc)
            self.abort(exc)
            return
        sink = server._sink
        if sink is None:
            return
        await sink(
            _server.TcpContext(
                incoming.pattern, incoming.data, incoming.id, self, serializer, incoming.metadata
            )
        )


_server._ServerConnection._read = _read  # type: ignore[method-assign]
