"""The polybus twin of server.mjs: its handlers on its patterns (common.mjs ``PATTERNS``), in
Python, for the interop tests where a NestJS client calls polybus.

Import by path, as harness.py::

    from twin import build_twin, patterns

    async with build_twin(url, prefix) as twin:
        result = await harness.run_nest_client("NATS", env)
    assert twin.events == [harness.ORDER]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from harness import wait_until

from polybus import Context, Microservice, RpcException

TICK = 0.1
"""Seconds between the items of ``ticks`` (common.mjs ``TICK_MS``)."""

NAMES = ("sum", "stream", "fail", "order_placed", "none", "ticks")


def patterns(prefix: str, *, kafka: bool = False) -> dict[str, Any]:
    """common.mjs ``PATTERNS`` by name: dotted string topics on Kafka, else ``sum`` is an
    object pattern."""
    if kafka:
        return {name: f"{prefix}.{name}" for name in NAMES}
    found: dict[str, Any] = {name: f"{prefix}{name}" for name in NAMES}
    found["sum"] = {"cmd": f"{prefix}sum"}
    return found


class Twin:
    """A ``Microservice`` with server.mjs's handlers, and what they saw.

    ``events``: the data of each ``order_placed`` event; ``contexts``: the context of each
    ``sum`` call; ``yielded``: the ``time.time()`` at which each ``ticks`` item was yielded.
    """

    def __init__(self, app: Microservice) -> None:
        self.app = app
        self.events: list[Any] = []
        self.contexts: list[Context] = []
        self.yielded: list[float] = []

    async def __aenter__(self) -> Twin:
        await self.app.listen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.app.close()

    async def wait_for_events(self, n: int, timeout: float = 10.0) -> list[Any]:
        """Wait until at least ``n`` events arrived (AssertionError if not in time)."""
        await wait_until(lambda: len(self.events) >= n, timeout)
        return list(self.events)


def build_twin(
    url: str,
    prefix: str,
    *,
    kafka: bool = False,
    parity: bool | None = None,
    wildcard: str | None = None,
    **options: Any,
) -> Twin:
    """The twin serving on ``url`` (``options`` go to ``Microservice``); with ``wildcard``
    it also answers that pattern with ``{"wild": data}``, as server.mjs's NEST_WILDCARD.
    ``parity``: also none and ticks, as server.mjs's NEST_PARITY (by default not on Kafka,
    where they would be two more topics in a group a NestJS server may share)."""
    if parity is None:
        parity = not kafka
    p = patterns(prefix, kafka=kafka)
    app = Microservice(url, **options)
    twin = Twin(app)

    @app.message_pattern(p["sum"])
    def total(numbers: list[float], context: Context) -> float:
        twin.contexts.append(context)
        return sum(numbers)

    @app.message_pattern(p["stream"])
    async def stream(_: Any) -> AsyncIterator[int]:
        for i in (1, 2, 3):
            await asyncio.sleep(0.005)
            yield i

    @app.message_pattern(p["fail"])
    def fail(_: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.event_pattern(p["order_placed"])
    def placed(data: Any) -> None:
        twin.events.append(data)

    if parity:

        @app.message_pattern(p["none"])
        def nothing(_: Any) -> None:
            return None

        @app.message_pattern(p["ticks"])
        async def ticks(_: Any) -> AsyncIterator[int]:
            for i in range(3):
                await asyncio.sleep(TICK)
                twin.yielded.append(time.time())
                yield i

    if wildcard is not None:

        @app.message_pattern(wildcard)
        def wild(data: Any) -> dict[str, Any]:
            return {"wild": data}

    return twin
