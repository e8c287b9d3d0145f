"""polybus.eager: a coroutine started at once and continued in a Task keeps one context."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from polybus.eager import start_eagerly

VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("VAR", default=None)


async def test_a_variable_set_before_the_first_suspension_can_be_reset_after() -> None:
    seen: list[str | None] = []

    async def handler() -> None:
        token = VAR.set("inside")
        await asyncio.sleep(0)
        seen.append(VAR.get())
        await asyncio.sleep(0.001)
        VAR.reset(token)  # ValueError when the rest ran in a copy of the first step's context
        seen.append(VAR.get())

    task = start_eagerly(asyncio.get_running_loop(), handler())
    assert task is not None
    await task
    assert seen == ["inside", None]
    assert VAR.get() is None  # nothing leaked into the caller's context


async def test_finished_at_once_gives_no_task_and_leaks_nothing() -> None:
    async def handler() -> None:
        VAR.set("inside")

    assert start_eagerly(asyncio.get_running_loop(), handler()) is None
    assert VAR.get() is None


async def test_results_exceptions_and_cancellation_reach_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    cancelled: list[bool] = []

    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    failing = start_eagerly(loop, fails())
    assert failing is not None
    with pytest.raises(KeyError):
        await failing
    waiting = start_eagerly(loop, waits())
    assert waiting is not None
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert cancelled == [True]


async def test_many_started_at_once_awaiting_one_future() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    results: list[int] = []

    async def waiter(i: int) -> None:
        results.append(await gate + i)

    tasks = [start_eagerly(loop, waiter(i)) for i in range(3)]
    gate.set_result(10)
    await asyncio.gather(*(t for t in tasks if t is not None))
    assert sorted(results) == [10, 11, 12]
