"""When the Microservice settles a message (ack/commit) and when it leaves it to the broker.

A handler that ran to its end settles its message, ok or not; a message the service never
handled because it was shutting down, or whose handler shutdown cancelled, stays unsettled
so that a broker that keeps messages (RabbitMQ with acks, Kafka) delivers it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from polybus import Microservice
from polybus.abc import Context, Features, MessageSink, RouteSpec
from polybus.packets import MISSING, Reply


class RecordingContext(Context):
    __slots__ = ("replies", "settled")

    def __init__(self, pattern: str, data: Any, id: Any = "1") -> None:
        super().__init__(pattern, data, id)
        self.replies: list[Reply] = []
        self.settled: list[bool] = []

    async def send_reply(self, reply: Reply) -> None:
        self.replies.append(reply)

    async def settle(self, ok: bool) -> None:
        self.settled.append(ok)


class RecordingTransport:
    features = Features(name="recording", unknown_pattern="error")

    def __init__(self) -> None:
        self.sink: MessageSink | None = None

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self.sink = sink

    async def stop(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def _settled(context: RecordingContext) -> None:
    for _ in range(100):
        if context.settled:
            return
        await asyncio.sleep(0)


async def test_finished_handlers_settle_ok_and_failed_ones_not_ok() -> None:
    transport = RecordingTransport()
    app = Microservice(transport=transport)

    @app.message_pattern("ok")
    def ok(x: int) -> int:
        return x

    @app.message_pattern("fails")
    def fails(x: int) -> int:
        raise ValueError("no")

    @app.message_pattern("stream")
    async def stream(n: int) -> Any:
        for i in range(n):
            yield i

    await app.listen()
    assert transport.sink is not None
    contexts = [RecordingContext("ok", 1), RecordingContext("fails", 1)]
    contexts.append(RecordingContext("stream", 3))
    for context in contexts:
        await transport.sink(context)
        await _settled(context)
    assert [c.settled for c in contexts] == [[True], [False], [True]]
    assert contexts[1].replies[0].err is not None
    # every item as it was yielded, then the completion on its own (as NestJS sends them)
    assert [(r.response, r.disposed) for r in contexts[2].replies] == [
        (0, False),
        (1, False),
        (2, False),
        (MISSING, True),
    ]
    await app.close()


async def test_a_handler_cancelled_by_shutdown_leaves_its_message_unsettled() -> None:
    transport = RecordingTransport()
    app = Microservice(transport=transport, grace=0.05)
    started = asyncio.Event()

    @app.message_pattern("slow")
    async def slow(x: int) -> int:
        started.set()
        await asyncio.sleep(60)
        return x

    @app.event_pattern("slow_event")
    async def slow_event(x: int) -> None:
        await asyncio.sleep(60)

    await app.listen()
    assert transport.sink is not None
    request = RecordingContext("slow", 1)
    event = RecordingContext("slow_event", 1, id=MISSING)
    await transport.sink(request)
    await transport.sink(event)
    await started.wait()
    await app.close()  # the grace runs out: both handlers are cancelled
    assert request.settled == [] and request.replies == []
    assert event.settled == []


async def test_a_message_arriving_during_shutdown_is_neither_handled_nor_settled() -> None:
    transport = RecordingTransport()
    app = Microservice(transport=transport, grace=1.0)
    release = asyncio.Event()
    handled: list[int] = []

    @app.message_pattern("work")
    async def work(x: int) -> int:
        handled.append(x)
        await release.wait()
        return x

    await app.listen()
    assert transport.sink is not None
    first = RecordingContext("work", 1)
    await transport.sink(first)
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(app.close())
    await asyncio.sleep(0)
    late = RecordingContext("work", 2)
    await transport.sink(late)  # e.g. a delivery the broker had already sent
    release.set()
    await closing
    assert handled == [1] and first.settled == [True]
    assert late.settled == [] and late.replies == []
