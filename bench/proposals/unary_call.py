"""core/client.py ``Call._result``: a lighter unary call.

``await client.send(...)`` does ``_start``'s work inline (one coroutine object and one
await less per call) and keeps the reply in a small ``_Unary`` record (4 slots) instead of
a ``_Pending`` whose ``deque`` allocates a 64-slot block (~370 bytes) per call; streaming
(``async for``) keeps ``_Pending``. Measured on a transport stub: about -1.3 µs per call.
"""

from __future__ import annotations

import time
from typing import Any

from polybus import client
from polybus.errors import RpcError
from polybus.packets import MISSING, Reply, Request
from polybus.patterns import to_route


class _Unary:
    __slots__ = ("done", "error", "value", "waiter")

    def __init__(self) -> None:
        self.value: Any = None
        self.waiter: Any = None
        self.done = False
        self.error: BaseException | None = None

    def push(self, reply: Reply) -> None:
        if self.done:
            return
        if reply.err:
            self.error = RpcError(reply.err)
            self.done = True
        else:
            if reply.response is not MISSING:
                self.value = reply.response
            elif not reply.disposed:
                self.value = None
            if reply.disposed:
                self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.error = exc
        self.done = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _result(self: client.Call) -> Any:
    self._claim()
    proxy = self._proxy
    if not proxy._connected:
        await proxy.connect()
    rid = proxy._next_id()
    record = self._record
    timeout = self._timeout
    request = Request(
        rid,
        self._pattern,
        to_route(self._pattern),
        record.data if record else self._data,
        record.headers if record else None,
        None if timeout is None else time.time() + timeout,
        record,
    )
    pending = _Unary()
    proxy._pending[rid] = pending  # type: ignore[assignment]
    try:
        release = await proxy.transport.request(request)
    except BaseException:
        del proxy._pending[rid]
        raise
    if timeout is not None:
        deadlines = proxy._deadlines
        if deadlines is None:
            deadlines = proxy._deadlines = client._Deadlines(proxy._loop)
        deadlines.add(timeout, rid, pending, self._pattern)  # type: ignore[arg-type]
    try:
        while not pending.done:
            waiter = pending.waiter = proxy._loop.create_future()
            await waiter
    finally:
        proxy._finish(rid, pending, release, timeout)  # type: ignore[arg-type]
    if pending.error is not None:
        raise pending.error
    return pending.value


client.Call._result = _result  # type: ignore[method-assign]
