"""NATS JetStream events (``?jetstream=true``) and NatsContext.dead_letter, against the
NATS server at $POLYBUS_NATS_URL (started with ``-js``). Each test has its own durable
name, so its own stream, deleted afterwards."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from polybus import ConfigError, Microservice, TransportError, create_client
from polybus.config import features_of
from polybus.packets import DEAD_LETTER_ERROR, DEAD_LETTER_ORIGIN
from polybus.transports.nats import NatsContext, NatsOptions

nats = pytest.importorskip("nats")

pytestmark = pytest.mark.broker("nats")


@pytest.fixture
def durable() -> str:
    return f"pbjs-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw(url: str, durable: str) -> AsyncIterator[Any]:
    """A plain nats-py connection; deletes the test's streams afterwards."""
    nc = await nats.connect(url)
    yield nc
    js = nc.jetstream()
    for info in await js.streams_info():
        if info.config.name.startswith(durable):
            await js.delete_stream(info.config.name)
    await nc.close()


def js_url(url: str, durable: str, **query: Any) -> str:
    options = "".join(f"&{key}={value}" for key, value in query.items())
    return f"{url}?jetstream=true&durable={durable}{options}"


async def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``check`` (a bool or an awaitable of one) until it holds."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def _value(result: Any) -> bool:
    return bool(await result) if inspect.isawaitable(result) else bool(result)


async def no_ack_pending(raw: Any, durable: str, route: str) -> bool:
    return await ack_pending(raw, durable, route) == 0


async def ack_pending(raw: Any, durable: str, route: str) -> int:
    """Messages the route's consumer delivered and is waiting to see settled."""
    js = raw.jetstream()
    for info in await js.consumers_info(durable):
        if info.config.filter_subject == route:
            pending: int = info.num_ack_pending
            return pending
    raise AssertionError(f"no consumer for {route!r}")


# -- options and features -----------------------------------------------------------------


def test_jetstream_options_and_features() -> None:
    options = NatsOptions.from_url(
        "nats://127.0.0.1:4222?jetstream=true&stream=orders&durable=billing&ack_wait=2.5"
    )
    assert options.jetstream and options.stream == "orders" and options.durable == "billing"
    assert options.ack_wait == 2.5 and options.durable_base == "billing"
    assert NatsOptions.from_url("nats://h?queue=q").durable_base == "q"
    jetstream = features_of("nats://127.0.0.1:4222?jetstream=true")
    plain = features_of("nats://127.0.0.1:4222")
    assert jetstream.name == "nats-jetstream" and jetstream.durable_events
    assert not plain.durable_events and plain.name == "nats"
    assert jetstream.dead_letter and plain.dead_letter


# -- publishing ---------------------------------------------------------------------------


async def test_emit_resolves_once_the_stream_has_the_event(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    route = f"{prefix}created"
    seen: list[Any] = []
    app = Microservice(js_url(url, durable))

    @app.event_pattern(route)
    def created(data: Any) -> None:
        seen.append(data)

    await app.listen()  # creates the stream
    await app.close()
    async with create_client(js_url(url, durable)) as client:
        for n in range(20):
            await client.emit(route, {"n": n})
            info = await raw.jetstream().stream_info(durable)
            assert info.state.messages == n + 1  # in the stream when emit() resolved
        msg = await raw.jetstream().get_msg(durable, 1)
        assert orjson.loads(msg.data) == {"pattern": route, "data": {"n": 0}}  # NestJS envelope
        assert msg.headers and msg.headers.get("Nats-Msg-Id")
    async with app:  # the events published while no server ran are delivered now
        await wait_until(lambda: len(seen) == 20)
    assert [item["n"] for item in seen] == list(range(20))


async def test_emit_without_a_stream_is_a_prompt_transport_error(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    async with create_client(js_url(url, durable, publish_timeout=30)) as client:
        started = time.monotonic()
        with pytest.raises(TransportError, match="no JetStream stream covers"):
            await client.emit(f"{prefix}nowhere", 1)
        assert time.monotonic() - started < 10  # not the whole publish_timeout


async def test_send_stays_core_nats_request_reply(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    app = Microservice(js_url(url, durable))

    @app.message_pattern(f"{prefix}echo")
    def echo(data: Any) -> Any:
        return data

    async with app, create_client(js_url(url, durable)) as client:
        assert await client.send(f"{prefix}echo", {"a": 1}, timeout=5) == {"a": 1}
    assert [info.config.name for info in await raw.jetstream().streams_info()].count(durable) == 0


# -- consuming ----------------------------------------------------------------------------


async def test_rejected_event_is_terminated_not_redelivered(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    route = f"{prefix}fails"
    calls: list[Any] = []
    app = Microservice(js_url(url, durable, ack_wait=1))

    @app.event_pattern(route)
    def fails(data: Any) -> None:
        calls.append(data)
        raise ValueError("rejected")

    async with app, create_client(js_url(url, durable)) as client:
        await client.emit(route, "x")
        await wait_until(lambda: len(calls) == 1)
        await wait_until(lambda: no_ack_pending(raw, durable, route))
        await asyncio.sleep(2.5)  # past ack_wait: an unsettled message would be back
    assert calls == ["x"]


async def test_handled_events_are_acknowledged_once(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    route = f"{prefix}ok"
    calls: list[Any] = []
    app = Microservice(js_url(url, durable, ack_wait=1))

    @app.event_pattern(route)
    async def ok(data: Any) -> None:
        await asyncio.sleep(0.01)
        calls.append(data)

    async with app, create_client(js_url(url, durable)) as client:
        await asyncio.gather(*(client.emit(route, n) for n in range(50)))
        await wait_until(lambda: len(calls) == 50)
        await wait_until(lambda: no_ack_pending(raw, durable, route))
        await asyncio.sleep(2.5)  # past ack_wait: nothing comes back
    assert sorted(calls) == list(range(50))


async def test_instances_sharing_the_durable_compete(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    route = f"{prefix}work"
    handled: list[tuple[str, Any]] = []
    apps = []
    for instance in ("a", "b"):
        app = Microservice(js_url(url, durable))

        @app.event_pattern(route)
        async def work(data: Any, name: str = instance) -> None:
            await asyncio.sleep(0.005)
            handled.append((name, data))

        apps.append(app)
    for app in apps:
        await app.listen()
    try:
        async with create_client(js_url(url, durable)) as client:
            await asyncio.gather(*(client.emit(route, n) for n in range(100)))
            await wait_until(lambda: len(handled) >= 100)
            await asyncio.sleep(0.5)
    finally:
        for app in apps:
            await app.close()
    assert sorted(data for _, data in handled) == list(range(100))  # each exactly once


async def test_undecodable_event_is_terminated_and_serving_goes_on(
    url: str, prefix: str, durable: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    route = f"{prefix}ev"
    seen: list[Any] = []
    app = Microservice(js_url(url, durable))

    @app.event_pattern(route)
    def ev(data: Any) -> None:
        seen.append(data)

    async with app, create_client(js_url(url, durable)) as client:
        await raw.jetstream().publish(route, b"{not json")
        await client.emit(route, "good")
        await wait_until(lambda: seen == ["good"])
        await wait_until(lambda: no_ack_pending(raw, durable, route))
    assert "malformed" in caplog.text


async def test_existing_stream_gets_the_new_routes(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    seen: list[Any] = []
    first = Microservice(js_url(url, durable))
    first.event_pattern(f"{prefix}a")(seen.append)
    await first.listen()
    await first.close()
    second = Microservice(js_url(url, durable))
    second.event_pattern(f"{prefix}a")(seen.append)
    second.event_pattern(f"{prefix}b")(seen.append)
    async with second, create_client(js_url(url, durable)) as client:
        await client.emit(f"{prefix}b", "b")
        await wait_until(lambda: seen == ["b"])
    info = await raw.jetstream().stream_info(durable)
    assert sorted(info.config.subjects) == [f"{prefix}a", f"{prefix}b"]


async def test_stream_overlapping_another_stream_is_a_config_error(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    route = f"{prefix}taken"
    await raw.jetstream().add_stream(name=f"{durable}-other", subjects=[route])
    app = Microservice(js_url(url, durable))

    @app.event_pattern(route)
    def taken(data: Any) -> None:
        pass

    with pytest.raises(ConfigError, match="another stream covers"):
        await app.listen()


# -- dead letters -------------------------------------------------------------------------


def dead_lettering_app(target: str, route: str, destination: str) -> Microservice:
    app = Microservice(target)

    @app.event_pattern(route)
    async def poison(data: Any, context: NatsContext) -> None:
        await context.dead_letter(destination, ValueError("cannot bill\nthis order"))

    return app


async def test_dead_letter_on_core_nats(url: str, prefix: str, raw: Any) -> None:
    route, destination = f"{prefix}orders", f"{prefix}dlq"
    sub = await raw.subscribe(destination)
    await raw.flush()
    async with dead_lettering_app(url, route, destination), create_client(url) as client:
        await client.emit(route, {"order": 7}, headers={"x-tenant": "t1"})
        msg = await sub.next_msg(timeout=5)
    assert orjson.loads(msg.data) == {"pattern": route, "data": {"order": 7}}
    assert msg.headers["x-tenant"] == "t1"
    assert msg.headers[DEAD_LETTER_ORIGIN] == route
    assert (
        "cannot bill" in msg.headers[DEAD_LETTER_ERROR]
        and "\n" not in msg.headers[DEAD_LETTER_ERROR]
    )


async def test_dead_letter_through_jetstream(url: str, prefix: str, durable: str, raw: Any) -> None:
    route, destination = f"{prefix}orders", f"{prefix}dlq"
    js = raw.jetstream()
    await js.add_stream(name=f"{durable}-dlq", subjects=[destination])
    target = js_url(url, durable)
    async with dead_lettering_app(target, route, destination), create_client(target) as client:
        await client.emit(route, {"order": 8}, headers={"x-tenant": "t2"})
        await wait_until(lambda: no_ack_pending(raw, durable, route))  # settled
        info = await js.stream_info(f"{durable}-dlq")
        assert info.state.messages == 1  # stored before the original was settled
    msg = await js.get_msg(f"{durable}-dlq", 1)
    assert orjson.loads(msg.data) == {"pattern": route, "data": {"order": 8}}
    assert msg.headers["x-tenant"] == "t2" and msg.headers[DEAD_LETTER_ORIGIN] == route
    assert "cannot bill" in msg.headers[DEAD_LETTER_ERROR]


async def test_dead_letter_without_a_stream_is_a_transport_error(
    url: str, prefix: str, durable: str, raw: Any
) -> None:
    route = f"{prefix}orders"
    errors: list[BaseException] = []
    app = Microservice(js_url(url, durable, publish_timeout=5))

    @app.event_pattern(route)
    async def poison(data: Any, context: NatsContext) -> None:
        try:
            await context.dead_letter(f"{prefix}no_stream", ValueError("x"))
        except TransportError as exc:
            errors.append(exc)

    async with app, create_client(js_url(url, durable)) as client:
        await client.emit(route, 1)
        await wait_until(lambda: len(errors) == 1)
    assert "no JetStream stream covers" in str(errors[0])
