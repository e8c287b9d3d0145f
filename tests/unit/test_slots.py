"""``Slots``: the handler concurrency limit every incoming message passes through."""

from __future__ import annotations

import asyncio

from polybus.slots import Slots


def take(slots: Slots) -> bool:
    if slots.free:
        slots.free -= 1
        return True
    return False


async def test_free_slots_are_taken_without_waiting() -> None:
    slots = Slots(2)
    assert take(slots) and take(slots)
    assert not take(slots)
    slots.release()
    assert take(slots)


async def test_a_released_slot_goes_to_the_longest_waiter() -> None:
    slots = Slots(1)
    assert take(slots)
    order: list[int] = []

    async def waiter(n: int) -> None:
        await slots.wait()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        slots.release()
        await asyncio.sleep(0)
        # handed over, never counted free: a newcomer cannot take it first
        assert slots.free == 0
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    slots.release()
    assert slots.free == 1


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    slots = Slots(1)
    assert take(slots)
    first = asyncio.create_task(slots.wait())
    second = asyncio.create_task(slots.wait())
    await asyncio.sleep(0)
    slots.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # so `second` got it
    assert slots.free == 0


async def test_a_waiter_cancelled_while_waiting_takes_nothing() -> None:
    slots = Slots(1)
    assert take(slots)
    waiting = asyncio.create_task(slots.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    slots.release()
    assert slots.free == 1
