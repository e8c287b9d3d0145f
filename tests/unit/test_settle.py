"""When the Microservice settles a message (ack/commit) and when it leaves it to the broker.

A handler that ran to its end settles its message, ok or not; a message the service never
handled because it was shutting down, or whose handler shutdown cancelled, stays unsettled
so that a broker that keeps messages (RabbitMQ with acks, Kafka) delivers it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybus import ConfigError, FailurePolicy, Microservice, TransportError
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


# -- every message settled exactly once, whatever fails on the way -----------------------


class FailingContext(RecordingContext):
    """A context whose reply, settle or dead-letter step raises where the test says so."""

    __slots__ = ("dead_letters", "fail_dead_letter", "fail_replies", "fail_settle")

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any = "1",
        *,
        fail_replies: frozenset[int] = frozenset(),
        fail_settle: bool = False,
        fail_dead_letter: bool = False,
    ) -> None:
        super().__init__(pattern, data, id)
        self.fail_replies = fail_replies
        self.fail_settle = fail_settle
        self.fail_dead_letter = fail_dead_letter
        self.dead_letters: list[str] = []

    async def send_reply(self, reply: Reply) -> None:
        if len(self.replies) in self.fail_replies:
            self.replies.append(reply)
            raise TransportError("the reply could not be published")
        self.replies.append(reply)

    async def settle(self, ok: bool) -> None:
        self.settled.append(ok)
        if self.fail_settle:
            raise TransportError("the channel is gone")

    async def dead_letter(self, destination: str, error: BaseException) -> None:
        if self.fail_dead_letter:
            raise TransportError("the dead-letter queue is gone")
        self.dead_letters.append(destination)


class DeadLetterTransport(RecordingTransport):
    features = Features(name="recording", unknown_pattern="error", dead_letter=True)


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"cmd": value}
    return value


def _behaving_service(transport: RecordingTransport, **options: Any) -> Microservice:
    """Handlers that return, return None, raise, fail validation, stream then raise, and
    return what cannot be encoded; events that succeed, fail, or fail once."""
    app = Microservice(transport=transport, **options)
    calls: dict[str, int] = {}

    @app.message_pattern("value")
    def value(x: Any) -> Any:
        return x

    @app.message_pattern("none")
    def none(x: Any) -> None:
        return None

    @app.message_pattern("raises")
    async def raises(x: Any) -> Any:
        raise RuntimeError("handler failed")

    @app.message_pattern("typed")
    def typed(x: int) -> int:
        return x

    @app.message_pattern("stream")
    async def stream(x: Any) -> Any:
        yield 1
        raise RuntimeError("mid-stream")

    @app.event_pattern("ok_event")
    def ok_event(x: Any) -> None:
        pass

    @app.event_pattern("bad_event")
    def bad_event(x: Any) -> None:
        raise RuntimeError("event handler failed")

    @app.event_pattern("flaky_event")
    def flaky_event(x: Any) -> None:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] % 2:
            raise RuntimeError("fails every other time")

    return app


PATTERNS = st.one_of(
    st.sampled_from(
        ["value", "none", "raises", "typed", "stream", "ok_event", "bad_event", "flaky_event"]
    ),
    st.sampled_from(["nope", "", "{", "[1]", '{"cmd":1}']),
    st.integers(0, 2000).map(_deep),  # nested 0 to 2,000 deep
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    pattern=PATTERNS,
    data=st.one_of(st.none(), st.integers(), st.text(max_size=10), st.just(object())),
    is_request=st.booleans(),
    fail_replies=st.frozensets(st.integers(0, 3), max_size=3),
    fail_settle=st.booleans(),
    fail_dead_letter=st.booleans(),
    retries=st.integers(0, 2),
    dead_letter=st.sampled_from([None, "dlq"]),
)
def test_every_message_is_settled_exactly_once_whatever_fails(
    pattern: Any,
    data: Any,
    is_request: bool,
    fail_replies: frozenset[int],
    fail_settle: bool,
    fail_dead_letter: bool,
    retries: int,
    dead_letter: str | None,
) -> None:
    """Routing (deep, malformed, unknown patterns), logging, validation, the handler, the
    reply, dead-lettering and settling itself fail in every combination: each message is
    settled once, a request gets an answer where a reply could be sent, and the service
    answers the next message."""

    async def main() -> None:
        transport = DeadLetterTransport()
        policy = FailurePolicy(retries=retries, backoff=0, dead_letter=dead_letter)
        app = _behaving_service(transport, on_failure=policy)
        await app.listen()
        assert transport.sink is not None
        context = FailingContext(
            pattern,
            data,
            "1" if is_request else MISSING,
            fail_replies=fail_replies,
            fail_settle=fail_settle,
            fail_dead_letter=fail_dead_letter,
        )
        await transport.sink(context)
        await _settled(context)
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(context.settled) == 1, context.settled
        if is_request and 0 not in fail_replies:
            assert context.replies, "a request got no answer although it could have"
        after = RecordingContext("value", 7)
        await transport.sink(after)
        await _settled(after)
        assert after.settled == [True] and after.replies[0].response == 7
        await app.close()

    asyncio.run(main())


async def test_a_none_result_crosses_as_null() -> None:
    transport = RecordingTransport()
    app = _behaving_service(transport)
    await app.listen()
    assert transport.sink is not None
    context = RecordingContext("none", 1)
    await transport.sink(context)
    await _settled(context)
    assert [(r.response, r.disposed) for r in context.replies] == [(None, True)]
    await app.close()


async def test_stream_items_leave_as_they_are_yielded() -> None:
    transport = RecordingTransport()
    app = Microservice(transport=transport)
    gate = asyncio.Event()

    @app.message_pattern("progress")
    async def progress(x: Any) -> Any:
        yield "first"
        await gate.wait()
        yield "second"

    await app.listen()
    assert transport.sink is not None
    context = RecordingContext("progress", None)
    await transport.sink(context)
    for _ in range(10):
        await asyncio.sleep(0)
    # the first item is out while the handler still waits for its next one
    assert [r.response for r in context.replies] == ["first"]
    gate.set()
    await _settled(context)
    assert [(r.response, r.disposed) for r in context.replies] == [
        ("first", False),
        ("second", False),
        (MISSING, True),
    ]
    await app.close()


# -- the failure policy -------------------------------------------------------------------


async def _run_event(app: Microservice, transport: RecordingTransport, pattern: str) -> Any:
    await app.listen()
    assert transport.sink is not None
    context = FailingContext(pattern, None, MISSING)
    await transport.sink(context)
    for _ in range(200):
        if context.settled:
            break
        await asyncio.sleep(0.001)
    await app.close()
    return context


async def test_by_default_a_failed_event_is_rejected_with_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RecordingTransport()
    context = await _run_event(_behaving_service(transport), transport, "bad_event")
    assert context.settled == [False]
    assert any(r.levelname == "ERROR" and "rejected" in r.getMessage() for r in caplog.records)


async def test_retries_then_handled() -> None:
    transport = RecordingTransport()
    app = _behaving_service(transport, on_failure=FailurePolicy(retries=1, backoff=0))
    context = await _run_event(app, transport, "flaky_event")
    assert context.settled == [True]


async def test_retries_exhausted_then_dead_lettered_and_settled_as_handled() -> None:
    transport = DeadLetterTransport()
    policy = FailurePolicy(retries=2, backoff=0, dead_letter="orders.dlq")
    context = await _run_event(
        _behaving_service(transport, on_failure=policy), transport, "bad_event"
    )
    assert context.dead_letters == ["orders.dlq"] and context.settled == [True]


async def test_a_route_policy_wins_over_the_service_policy() -> None:
    transport = DeadLetterTransport()
    app = Microservice(transport=transport, on_failure=FailurePolicy(dead_letter="service.dlq"))
    attempts: list[int] = []

    @app.event_pattern("e", on_failure=FailurePolicy(retries=3, backoff=0, dead_letter="e.dlq"))
    def e(x: Any) -> None:
        attempts.append(1)
        raise RuntimeError("no")

    context = await _run_event(app, transport, "e")
    assert len(attempts) == 4 and context.dead_letters == ["e.dlq"]
    assert "on_failure" not in app.routes()[0].options  # core's option, not the transport's


async def test_dead_lettering_needs_a_transport_that_can() -> None:
    app = Microservice(transport=RecordingTransport(), on_failure=FailurePolicy(dead_letter="q"))
    with pytest.raises(ConfigError, match="cannot dead-letter"):
        await app.listen()


def test_policy_values_are_checked() -> None:
    with pytest.raises(ConfigError):
        FailurePolicy(retries=-1)
    with pytest.raises(ConfigError):
        FailurePolicy(dead_letter="")
    assert [FailurePolicy(backoff=0.1, max_backoff=0.3).delay(n) for n in (1, 2, 3)] == [
        0.1,
        0.2,
        0.3,
    ]
