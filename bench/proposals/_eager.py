"""Shared by the eager proposals: continue an eagerly started coroutine in a Task."""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any


@types.coroutine
def resume(coro: Coroutine[Any, Any, None], first: Any) -> Generator[Any, None, None]:
    """Continue a started coroutine in a Task: hand its first awaited future to the Task,
    then delegate (``yield from`` forwards sends and throws exactly as ``await`` does)."""
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
