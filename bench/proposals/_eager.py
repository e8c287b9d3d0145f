"""Shared by the eager proposals: start a coroutine at once, continue it in a Task only if
it suspends (what Python 3.12's eager tasks do, for 3.10/3.11)."""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any


def start(coro: Coroutine[Any, Any, None]) -> tuple[bool, Any]:
    """Run ``coro`` to its first suspension: ``(True, None)`` if it finished, else
    ``(False, what it yielded)`` for :func:`resume`. Exceptions propagate."""
    try:
        first = coro.send(None)
    except StopIteration:
        return True, None
    if getattr(first, "_asyncio_future_blocking", False):
        # Do what a Task does with a yielded future at once: C futures refuse a second
        # ``await`` while the flag is set, and other eagerly started coroutines may await
        # the same (shared, e.g. drain) future before any Task has taken this one.
        first._asyncio_future_blocking = False
    return False, first


@types.coroutine
def resume(coro: Coroutine[Any, Any, None], first: Any) -> Generator[Any, None, None]:
    """Continue a started coroutine in a Task: hand its first awaited future to the Task,
    then delegate (``yield from`` forwards sends and throws exactly as ``await`` does)."""
    if getattr(first, "_asyncio_future_blocking", None) is False:
        first._asyncio_future_blocking = True  # cleared by start(): the Task checks it
    try:
        yield first
    except BaseException as exc:
        try:
            following = coro.throw(exc)
        except StopIteration:
            return
        yield from resume(coro, following)
        return
    yield from coro.__await__()
