"""Start a coroutine at once; continue it in a Task only if it suspends.

A handler that answers without waiting (a CPU-only handler whose reply write is not
blocked) then costs no extra loop iteration (and, before Python 3.12, no Task); one that
waits continues in a Task from where it stopped, in the context it started in. Python 3.12+
does this itself (``Task(eager_start=True)``); for 3.10 and 3.11 the first step is run here
and a generator-based coroutine hands the rest to a Task (3.12+ Tasks refuse those).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["result_or_task", "start_eagerly"]

T = TypeVar("T")

if sys.version_info >= (3, 12):

    def start_eagerly(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None] | None:
        """Run ``coro`` up to its first suspension: ``None`` if it finished there, else the
        Task that goes on with it. Its exception, if it raised before suspending, propagates."""
        task = asyncio.Task(coro, loop=loop, eager_start=True)
        if task.done():
            task.result()
            return None
        return task

    def result_or_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
    ) -> tuple[T | None, asyncio.Task[T] | None]:
        """Run ``coro`` up to its first suspension: ``(its result, None)`` if it finished
        there, else ``(None, the Task that goes on with it)``, which the caller can bound
        in time. Its exception, if it raised before suspending, propagates."""
        task = asyncio.Task(coro, loop=loop, eager_start=True)
        if task.done():
            return task.result(), None
        return None, task

else:

    def start_eagerly(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None] | None:
        """Run ``coro`` up to its first suspension: ``None`` if it finished there, else the
        Task that goes on with it. Its exception, if it raised before suspending, propagates."""
        context = contextvars.copy_context()
        finished, first = context.run(_first_step, coro)
        if finished:
            return None
        # Every later step runs in the same context object as the first (a Task would run
        # them in a copy of it): a ContextVar set before the suspension can be reset after.
        return loop.create_task(_resume(coro, first, context))

    def result_or_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
    ) -> tuple[T | None, asyncio.Task[T] | None]:
        """Run ``coro`` up to its first suspension: ``(its result, None)`` if it finished
        there, else ``(None, the Task that goes on with it)``, which the caller can bound
        in time. Its exception, if it raised before suspending, propagates.

        The first step runs in the caller's own context (it is the caller's work, not a
        task of its own); the Task, if any, in a copy of it, as ``create_task`` makes."""
        finished, first = _first_step(coro)
        if finished:
            return first, None
        return None, loop.create_task(_resume(coro, first))

    def _first_step(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
        """``(True, result)`` when ``coro`` finished at once, else ``(False, what it yielded)``."""
        try:
            first = coro.send(None)
        except StopIteration as stop:
            return True, stop.value
        if getattr(first, "_asyncio_future_blocking", False):
            # What a Task does with a yielded future at once: other eagerly started
            # coroutines may await the same future before the Task below takes this one.
            first._asyncio_future_blocking = False
        return False, first

    @types.coroutine
    def _resume(
        coro: Coroutine[Any, Any, T], first: Any, context: contextvars.Context | None = None
    ) -> Generator[Any, None, T]:
        """Hand the future ``coro`` stopped on to the Task, then drive ``coro`` as ``await``
        does (sends and throws forwarded, cancellation included), each step in ``context``
        when one is given."""
        run = context.run if context is not None else _call
        if getattr(first, "_asyncio_future_blocking", None) is False:
            first._asyncio_future_blocking = True  # a Task expects it set on a yielded future
        following = first
        while True:
            step: Callable[[Any], Any]
            argument: Any
            try:
                value = yield following
            except BaseException as exc:
                step, argument = coro.throw, exc
            else:
                step, argument = coro.send, value
            try:
                following = run(step, argument)
            except StopIteration as stop:
                result: T = stop.value
                return result

    def _call(step: Any, argument: Any) -> Any:
        return step(argument)
