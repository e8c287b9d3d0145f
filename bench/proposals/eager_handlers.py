"""core/server.py ``Microservice._accept``: start the handler eagerly.

Today every message costs a Task (``create_task`` + ``add_done_callback`` + the in-flight
set) and one more loop iteration before the handler runs. Started eagerly (what Python
3.12's eager tasks do), a handler that completes without suspending (a CPU-only handler
whose reply write is not blocked) needs none of it; one that suspends continues in a Task
from where it stopped, in the same copied context.
"""

from __future__ import annotations

import asyncio
import contextvars

from bench.proposals._eager import resume, start
from polybus import server
from polybus.abc import Context


async def _accept(self: server.Microservice, context: Context) -> None:
    if self._closing:
        await context.settle(False)
        return
    slots = self._slots
    assert slots is not None
    await slots.acquire()
    coro = self._handle(context)
    ctx = contextvars.copy_context()
    try:
        finished, first = ctx.run(start, coro)
    except BaseException:
        slots.release()
        server.log.exception("handler task failed")
        return
    if finished:
        slots.release()
        return
    # created inside ctx: the Task runs in (a copy of) the context the handler started in
    task = ctx.run(asyncio.get_running_loop().create_task, resume(coro, first))
    self._inflight.add(task)
    task.add_done_callback(self._done)


server.Microservice._accept = _accept  # type: ignore[method-assign]
