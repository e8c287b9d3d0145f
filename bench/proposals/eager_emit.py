"""core/client.py ``ClientProxy.emit``: publish eagerly, a Task only if it must wait.

Today every ``emit()`` creates a Task (and its first step waits for the next loop
iteration). Started eagerly, a publish that completes at once (connected, the write
corked and not paused) returns an already-completed future: no Task, no extra
iteration, and the event is queued in the caller's order. A publish that has to wait
(connecting, back-pressure, a broker confirm) continues as a Task, as today. The return
type becomes ``asyncio.Future[None]`` (a Task is one): awaiting, callbacks and
``result()`` behave the same.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from bench.proposals._eager import resume
from polybus import client
from polybus.errors import ConfigError
from polybus.packets import Event, Record
from polybus.patterns import to_route


def emit(
    self: client.ClientProxy, pattern: Any, data: Any = None, *, headers: Any = None
) -> asyncio.Future[None]:
    if pattern is None:
        raise ConfigError("pattern must not be None")
    record = data if isinstance(data, Record) else None
    if headers is not None:
        record = client._with_headers(record, data, headers)
    event = Event(
        pattern,
        to_route(pattern),
        record.data if record else data,
        record.headers if record else None,
        record,
    )
    loop = self._loop
    coro = self._publish(event)
    ctx = contextvars.copy_context()
    done: asyncio.Future[None] = loop.create_future()
    try:
        first = ctx.run(coro.send, None)
    except StopIteration:
        done.set_result(None)
        return done
    except BaseException as exc:
        done.set_exception(exc)
        return done
    task: asyncio.Future[None] = ctx.run(loop.create_task, resume(coro, first))
    return task


client.ClientProxy.emit = emit  # type: ignore[method-assign, assignment]
