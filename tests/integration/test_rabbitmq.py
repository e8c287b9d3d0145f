"""RabbitMQ transport: options, the NestJS wire format seen from a raw AMQP peer, acks,
reconnection. Needs a broker ($POLYBUS_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from polybus import (
    ConfigError,
    Context,
    Microservice,
    ProtocolError,
    Record,
    RpcError,
    TransportError,
    create_client,
)
from polybus.packets import DEAD_LETTER_ERROR, DEAD_LETTER_ORIGIN, DEADLINE_HEADER
from polybus.testing.brokers import broker_url
from polybus.transports.rabbitmq import (
    RabbitMQClientTransport,
    RabbitMQContext,
    RabbitMQOptions,
    RabbitMQServerTransport,
)

aio_pika = pytest.importorskip("aio_pika")

pytestmark = pytest.mark.broker("rabbitmq")


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def amqp() -> str:
    return broker_url("rabbitmq")


@pytest.fixture
async def queue(amqp: str) -> AsyncIterator[str]:
    """A unique queue name; the queue is deleted after the test."""
    name = f"pbtest-{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


def with_queue(amqp: str, queue: str, **query: Any) -> str:
    base = amqp.split("?", 1)[0]
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{base}?queue={queue}{extra}"


@contextlib.asynccontextmanager
async def raw_channel(amqp: str) -> AsyncIterator[Any]:
    connection = await aio_pika.connect(amqp)
    try:
        yield await connection.channel(publisher_confirms=False)
    finally:
        await connection.close()


async def declare(channel: Any, queue: str) -> Any:
    """The declaration NestJS (amqplib) makes for its queue."""
    return await channel.declare_queue(queue, durable=True, exclusive=False, auto_delete=False)


async def ready_count(amqp: str, queue: str) -> int:
    async with raw_channel(amqp) as channel:
        declared = await channel.declare_queue(queue, passive=True)
        count: int = declared.declaration_result.message_count
        return count


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def echo_app(url: str, **options: Any) -> Microservice:
    app = Microservice(url, **options)

    @app.message_pattern("echo")
    def echo(data: Any) -> Any:
        return data

    @app.message_pattern({"cmd": "sum"})
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    @app.message_pattern("slow")
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    return app


# -- options ------------------------------------------------------------------------------


def test_options_from_url() -> None:
    options = RabbitMQOptions.from_url(
        "amqps://user:s3cret@rabbit.example:5671/prod?queue=orders&prefetchCount=7"
        "&no_ack=false&persistent=1&ca=/ca.pem&certfile=/c.pem&key=/k.pem&heartbeat=10"
    )
    assert options.urls == ["amqps://user:s3cret@rabbit.example:5671/prod"]
    assert options.queue == "orders"
    assert options.prefetch_count == 7
    assert options.no_ack is False and options.persistent is True
    assert (options.ca_file, options.cert_file, options.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert options.heartbeat == 10
    assert "s3cret" not in repr(options)
    transport = RabbitMQClientTransport(options, _json())
    assert "s3cret" not in repr(transport) and "***" in repr(transport)


def test_publisher_confirms_follow_persistence_unless_given() -> None:
    base = "amqp://127.0.0.1/?queue=q"
    assert RabbitMQOptions.from_url(base).confirms is False
    assert RabbitMQOptions.from_url(f"{base}&persistent=true").confirms is True
    assert (
        RabbitMQOptions.from_url(f"{base}&persistent=true&publisher_confirms=false").confirms
        is False
    )
    assert RabbitMQOptions.from_url(f"{base}&publisher_confirms=true").confirms is True


async def test_persistent_publishes_are_confirmed(amqp: str, queue: str) -> None:
    async with create_client(with_queue(amqp, queue, persistent="true")) as client:
        transport = client.transport
        assert isinstance(transport, RabbitMQClientTransport) and transport._link is not None
        assert transport._link.raw.publisher_confirms
        await client.emit("evt", 1)  # resolved by the broker's confirm
    assert await ready_count(amqp, queue) == 1


async def test_a_persistent_publish_the_broker_refuses_fails(amqp: str, queue: str) -> None:
    full = {"max_length": 1, "overflow": "reject-publish"}  # a full queue nacks publishes
    url = with_queue(amqp, queue, persistent="true")
    async with create_client(url, queue_options=full) as client:
        await client.emit("evt", 1)
        with pytest.raises(TransportError, match="publish failed"):
            await client.emit("evt", 2)
        with pytest.raises(TransportError):
            await client.send("echo", 3, timeout=5)
        assert client.status.value == "connected"
    assert await ready_count(amqp, queue) == 1


def test_options_from_url_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        RabbitMQOptions.from_url("amqp://localhost/?queue=q&prefetch_count=lots")
    with pytest.raises(ConfigError):
        RabbitMQOptions.from_url("amqp://localhost/?queue=q&no_ack=maybe")
    with pytest.raises(ConfigError):
        RabbitMQOptions.from_url("amqp://localhost/?queue=q&bogus=1")
    with pytest.raises(ConfigError):  # a queue is required in practice
        RabbitMQServerTransport(RabbitMQOptions.from_url("amqp://localhost/"), _json())


def test_options_from_nest() -> None:
    options = RabbitMQOptions.from_nest(
        {
            "urls": ["amqp://guest:guest@127.0.0.1:5672"],
            "queue": "svc",
            "queueOptions": {"durable": False, "maxPriority": 10, "arguments": {"x-a": 1}},
            "noAck": False,
            "prefetchCount": 3,
            "isGlobalPrefetchCount": True,
            "headers": {"x-app": "billing"},
            "socketOptions": {"heartbeatIntervalInSeconds": 2},
        }
    )
    assert options.queue == "svc" and options.no_ack is False and options.prefetch_count == 3
    assert options.is_global_prefetch_count and options.heartbeat == 2
    assert options.headers == {"x-app": "billing"}
    assert options.declare_arguments() == (False, False, False, {"x-a": 1, "x-max-priority": 10})
    assert RabbitMQOptions(queue="q").declare_arguments() == (True, False, False, None)
    exchange = RabbitMQOptions.from_nest(
        {
            "queue": "q",
            "exchange": "ex",
            "exchangeType": "fanout",
            "routingKey": "rk",
            "wildcards": True,
            "exchangeArguments": {"alternate-exchange": "ae"},
        }
    )
    assert (exchange.exchange_name, exchange.exchange_type, exchange.routing_key) == (
        "ex",
        "fanout",
        "rk",
    )
    assert exchange.wildcards and exchange.exchange_arguments == {"alternate-exchange": "ae"}
    by_url = RabbitMQOptions.from_url("amqp://h/?queue=q&wildcards=true&exchange_type=direct")
    assert by_url.wildcards and by_url.exchange_type == "direct"
    assert by_url.exchange_name == "q"  # the queue's name, as NestJS defaults it
    with pytest.raises(ConfigError):
        RabbitMQOptions.from_url("amqp://h/?queue=q&exchange_arguments=x")
    with pytest.raises(ConfigError):
        RabbitMQClientTransport(RabbitMQOptions(queue="q", exchange_type=""), _json())
    with pytest.raises(ConfigError):
        RabbitMQServerTransport(RabbitMQOptions(queue="q", queue_options={"nope": 1}), _json())


def test_tls_options_build_a_context(tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ca_file, cert_file = tmp_path / "ca.pem", tmp_path / "cert.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    options = RabbitMQOptions.from_url(
        f"amqps://localhost/?queue=q&ca_file={ca_file}&cert_file={cert_file}"
    )
    context = options.client_ssl()
    assert context is not None
    assert RabbitMQOptions.from_url("amqps://localhost/?queue=q").client_ssl() is None  # system CAs


def _json() -> Any:
    from polybus.serializers import JsonSerializer

    return JsonSerializer()


# -- wire format against a raw AMQP peer --------------------------------------------------


async def test_request_and_event_as_nestjs_sends_them(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue)
    async with raw_channel(amqp) as channel:
        service = await declare(channel, queue)
        async with create_client(url, headers={"x-app": "polybus"}) as client:
            call = asyncio.ensure_future(client.send({"cmd": "sum"}, [1, 2], timeout=10))
            request = await _next(service)
            body = orjson.loads(request.body)
            assert body == {"pattern": {"cmd": "sum"}, "data": [1, 2], "id": body["id"]}
            assert request.correlation_id == body["id"]
            assert request.reply_to.startswith("amq.rabbitmq.reply-to")
            assert request.delivery_mode == 1
            assert request.headers["x-app"] == "polybus"
            assert float(request.headers[DEADLINE_HEADER]) > time.time()
            # answer like a NestJS server: no id in the body, correlation by property
            await channel.default_exchange.publish(
                aio_pika.Message(b'{"response":3,"isDisposed":true}', correlation_id=body["id"]),
                routing_key=request.reply_to,
                mandatory=False,
            )
            assert await call == 3

            await client.emit("order_placed", {"n": 1})
            event = await _next(service)
            assert orjson.loads(event.body) == {"pattern": "order_placed", "data": {"n": 1}}
            assert event.correlation_id is None and event.reply_to is None
            assert event.delivery_mode == 1

            record = Record({"n": 2}, headers={"x-app": "override", "k": "v"}, priority=4,
                            persistent=True, expiration_ms=60000)  # fmt: skip
            await client.emit("order_placed", record)
            event = await _next(service)
            assert orjson.loads(event.body)["data"] == {"n": 2}
            assert event.headers == {"x-app": "override", "k": "v"}
            assert event.priority == 4 and event.delivery_mode == 2
            assert event.expiration is not None


async def _next(queue: Any, timeout: float = 5.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise AssertionError("no message arrived")


async def test_replies_as_nestjs_sends_them(amqp: str, queue: str) -> None:
    app = echo_app(with_queue(amqp, queue))

    @app.message_pattern("stream")
    async def stream(_: Any) -> AsyncIterator[int]:
        for i in (1, 2):
            yield i

    async with app, raw_channel(amqp) as channel:
        replies: asyncio.Queue[Any] = asyncio.Queue()
        direct = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await direct.consume(replies.put, no_ack=True)

        async def call(pattern: Any, data: Any, rid: str) -> None:
            body = orjson.dumps({"pattern": pattern, "data": data, "id": rid})
            await channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=rid, reply_to="amq.rabbitmq.reply-to"),
                routing_key=queue,
                mandatory=False,
            )

        await call({"cmd": "sum"}, [1, 2, 3], "r1")
        reply = await asyncio.wait_for(replies.get(), 5)
        assert reply.correlation_id == "r1"
        assert orjson.loads(reply.body) == {"response": 6, "isDisposed": True}  # no id

        await call("stream", None, "r2")
        # each item as it is yielded, then the completion (NestJS's packets on later ticks)
        bodies = [orjson.loads((await asyncio.wait_for(replies.get(), 5)).body) for _ in range(3)]
        assert bodies == [{"response": 1}, {"response": 2}, {"isDisposed": True}]

        await call("missing", None, "r3")
        reply = await asyncio.wait_for(replies.get(), 5)
        assert reply.correlation_id == "r3"
        assert orjson.loads(reply.body) == {
            "id": "r3",
            "status": "error",
            "err": "There is no matching message handler defined in the remote service.",
        }


async def test_queue_is_declared_as_nestjs_declares_it(amqp: str, queue: str) -> None:
    async with echo_app(with_queue(amqp, queue)):
        async with raw_channel(amqp) as channel:
            await declare(channel, queue)  # same flags: no PRECONDITION_FAILED
        async with raw_channel(amqp) as channel:
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(queue, durable=False)


async def test_no_assert_uses_an_existing_queue(amqp: str, queue: str) -> None:
    async with raw_channel(amqp) as channel:
        await channel.declare_queue(queue, durable=True, arguments={"x-max-priority": 5})
    url = with_queue(amqp, queue, no_assert="true")
    async with echo_app(url), create_client(url) as client:
        assert await client.send("echo", "hi") == "hi"
    # declaring with matching queue options works too
    options = {"queue_options": {"max_priority": 5}}
    url = with_queue(amqp, queue)
    async with echo_app(url, **options), create_client(url, **options) as client:
        assert await client.send("echo", 1) == 1


async def test_context_exposes_the_amqp_message(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue)
    app = Microservice(url)
    seen: dict[str, Any] = {}

    @app.message_pattern("inspect")
    def inspect(_: Any, ctx: Context) -> str:
        assert isinstance(ctx, RabbitMQContext)
        seen.update(
            headers=ctx.headers,
            deadline=ctx.deadline,
            priority=ctx.message.priority,
            routing_key=ctx.message.routing_key,
            channel=ctx.channel,
            reply_to=ctx.reply_to,
        )
        return "ok"

    async with app, create_client(url) as client:
        reply = await client.send("inspect", Record(None, headers={"h": "é"}, priority=2))
        assert reply == "ok"
    assert seen["headers"]["h"] == "é"
    assert seen["deadline"] == pytest.approx(time.time() + 30, abs=5)
    assert seen["priority"] == 2 and seen["routing_key"] == queue
    assert seen["channel"] is not None and seen["reply_to"].startswith("amq.rabbitmq.reply-to")


async def test_malformed_messages_are_dropped_and_the_server_keeps_serving(
    amqp: str, queue: str
) -> None:
    url = with_queue(amqp, queue)
    async with echo_app(url), raw_channel(amqp) as channel:
        for body in (b"not json", b"[1,2]", b'{"data": 1}'):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
        async with create_client(url) as client:
            assert await client.send("echo", "still here") == "still here"


async def test_max_message_bytes(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue)
    app = echo_app(url, max_message_bytes=1000)

    @app.message_pattern("grow")
    def grow(data: str) -> str:
        return data * 4

    async with app:
        async with create_client(url, max_message_bytes=100) as client:
            with pytest.raises(ProtocolError):
                await client.send("echo", "x" * 200)
            assert client.pending_count == 0
        async with create_client(url) as client:
            with pytest.raises(RpcError):  # the reply would be too big: an error reply instead
                await client.send("grow", "x" * 500)
            assert await client.send("echo", "small") == "small"


# -- acknowledgements ---------------------------------------------------------------------


async def test_manual_ack_settles_each_message_once(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue, no_ack="false", prefetch_count=10)
    app = Microservice(url)
    calls: list[str] = []

    @app.event_pattern("ok")
    def ok(data: Any) -> None:
        calls.append("ok")

    @app.event_pattern("boom")
    def boom(data: Any) -> None:
        calls.append("boom")
        raise ValueError("handler failed")

    @app.event_pattern("self_ack")
    async def self_ack(data: Any, ctx: RabbitMQContext) -> None:
        calls.append("self_ack")
        await ctx.ack()  # the automatic ack must not ack it again

    @app.message_pattern("echo")
    def echo(data: Any) -> Any:
        return data

    async with app, create_client(url) as client:
        for pattern in ("ok", "boom", "self_ack", "unknown", "ok", "self_ack"):
            await client.emit(pattern, {})
        await wait_for(lambda: len(calls) == 5)
        # a double ack would have closed the channel; the server still answers
        assert await client.send("echo", "alive") == "alive"
    # after the server is gone, nothing went back to the queue (no requeue, nothing unacked)
    assert await ready_count(amqp, queue) == 0
    assert sorted(calls) == ["boom", "ok", "ok", "self_ack", "self_ack"]


async def _inject_request(channel: Any, queue: str, reply_to: str, data: Any = None) -> None:
    """A request as a NestJS client sends it, answered to ``reply_to``."""
    request_id = uuid.uuid4().hex
    body = orjson.dumps({"pattern": "echo", "data": data, "id": request_id})
    await channel.default_exchange.publish(
        aio_pika.Message(body, correlation_id=request_id, reply_to=reply_to), routing_key=queue
    )


UNREPLYABLE = {
    "garbled direct reply-to": "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMzI4NjQ1NQ-garbled",
    "missing queue": f"pbtest-missing-{uuid.uuid4().hex[:12]}",
}


@pytest.mark.parametrize("reply_to", list(UNREPLYABLE.values()), ids=list(UNREPLYABLE))
async def test_a_request_whose_reply_cannot_be_delivered_is_settled(
    amqp: str, queue: str, reply_to: str
) -> None:
    url = with_queue(amqp, queue, no_ack="false", prefetch_count=1)
    async with echo_app(url), raw_channel(amqp) as channel:
        await _inject_request(channel, queue, reply_to)
        async with create_client(url) as client:  # prefetch 1: answered only once it is settled
            assert await client.send("echo", "next", timeout=10) == "next"
    assert await ready_count(amqp, queue) == 0  # settled, not requeued when the server left


async def test_poison_replies_do_not_fill_the_prefetch_window(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue, no_ack="false", prefetch_count=10)
    async with echo_app(url), raw_channel(amqp) as channel:
        reply_tos = list(UNREPLYABLE.values())
        for n in range(100):
            await _inject_request(channel, queue, reply_tos[n % len(reply_tos)], n)
        async with create_client(url) as client:
            assert await client.send("echo", "good", timeout=15) == "good"
        async with raw_channel(amqp) as probe:
            declared = await probe.declare_queue(queue, passive=True)
            assert declared.declaration_result.message_count == 0
    assert await ready_count(amqp, queue) == 0


# -- dead-lettering -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def dead_letter_queue(amqp: str, queue: str) -> AsyncIterator[str]:
    name = f"{queue}-dlq"
    try:
        yield name
    finally:
        async with raw_channel(amqp) as channel:
            await channel.queue_delete(name)


async def _get(amqp: str, queue: str, timeout: float = 10.0) -> Any:
    """The next message of ``queue`` (acked), waiting for the queue to exist and fill."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        async with raw_channel(amqp) as channel:
            with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
                declared = await channel.declare_queue(queue, passive=True)
                message = await declared.get(no_ack=True, fail=False)
                if message is not None:
                    return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue!r}")


@pytest.mark.parametrize("existing", [False, True], ids=["declared", "existing-with-arguments"])
async def test_dead_letter_republishes_the_message_as_it_arrived(
    amqp: str, queue: str, existing: bool
) -> None:
    url = with_queue(amqp, queue, no_ack="false")
    app = Microservice(url)

    async with dead_letter_queue(amqp, queue) as dlq:

        @app.event_pattern("bad")
        async def bad(data: Any, ctx: RabbitMQContext) -> None:
            await ctx.dead_letter(dlq, ValueError("no good"))

        if existing:  # declared by someone else, with arguments: used as it is
            async with raw_channel(amqp) as channel:
                await channel.declare_queue(dlq, durable=True, arguments={"x-max-length": 99})
        body = orjson.dumps({"pattern": "bad", "data": {"n": 1}})
        async with app, raw_channel(amqp) as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    headers={"h": "v"},
                    priority=3,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id="m-1",
                    content_type="application/json",
                ),
                routing_key=queue,
            )
            message = await _get(amqp, dlq)
        assert message.body == body
        assert message.headers == {"h": "v", DEAD_LETTER_ERROR: "ValueError: no good",
                                   DEAD_LETTER_ORIGIN: queue}  # fmt: skip
        assert message.priority == 3 and message.message_id == "m-1"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert await ready_count(amqp, queue) == 0  # the original was acked


async def test_dead_letter_declares_a_deleted_queue_again(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue, no_ack="false")
    app = Microservice(url)

    async with dead_letter_queue(amqp, queue) as dlq:

        @app.event_pattern("bad")
        async def bad(n: int, ctx: RabbitMQContext) -> None:
            await ctx.dead_letter(dlq, ValueError(f"bad {n}"))

        async with app, create_client(url) as client:
            await client.emit("bad", 1)
            assert (await _get(amqp, dlq)).headers[DEAD_LETTER_ERROR] == "ValueError: bad 1"
            async with raw_channel(amqp) as channel:
                await channel.queue_delete(dlq)
            await client.emit("bad", 2)
            assert (await _get(amqp, dlq)).headers[DEAD_LETTER_ERROR] == "ValueError: bad 2"


async def test_dead_letter_to_a_queue_that_cannot_take_it_is_a_transport_error(
    amqp: str, queue: str
) -> None:
    url = with_queue(amqp, queue, no_ack="false")
    app = echo_app(url)
    errors: list[BaseException] = []

    @app.event_pattern("bad")
    async def bad(data: Any, ctx: RabbitMQContext) -> None:
        try:
            await ctx.dead_letter("amq.reserved-name", ValueError("no good"))
        except TransportError as exc:
            errors.append(exc)

    async with app, create_client(url) as client:
        await client.emit("bad", {})
        await wait_for(lambda: bool(errors))
        assert await client.send("echo", "still serving") == "still serving"


async def test_broker_side_dead_lettering_of_rejected_messages(amqp: str, queue: str) -> None:
    async with dead_letter_queue(amqp, queue) as dlq:
        queue_options = {"dead_letter_exchange": "", "dead_letter_routing_key": dlq}
        app = Microservice(with_queue(amqp, queue, no_ack="false"), queue_options=queue_options)

        @app.event_pattern("bad")
        def bad(data: Any) -> None:
            raise ValueError("no good")

        async with raw_channel(amqp) as channel:
            await channel.declare_queue(dlq, durable=True)
        async with app, raw_channel(amqp) as channel:
            body = orjson.dumps({"pattern": "bad", "data": 1})
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
            message = await _get(amqp, dlq)
        assert message.body == body
        death = message.headers["x-death"][0]
        assert death["reason"] == "rejected" and death["queue"] == queue


async def test_accepted_events_survive_a_server_crash(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue, no_ack="false")
    started = asyncio.Event()
    done: list[Any] = []

    def build(block: bool) -> Microservice:
        app = Microservice(url)

        @app.event_pattern("work")
        async def work(data: Any) -> None:
            started.set()
            if block:
                await asyncio.sleep(60)
            done.append(data)

        return app

    crashing = build(block=True)
    async with create_client(url) as client:
        await crashing.listen()
        await client.emit("work", {"job": 1})
        await asyncio.wait_for(started.wait(), 5)
        await crashing.close(grace=0)  # the handler never finished: nothing was settled
    assert await ready_count(amqp, queue) == 1  # the broker requeued it
    async with build(block=False):
        await wait_for(lambda: done == [{"job": 1}])


# -- topology -----------------------------------------------------------------------------


async def test_competing_servers_share_the_queue(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue)
    seen: list[str] = []

    def build(name: str) -> Microservice:
        app = Microservice(url)

        @app.message_pattern("who")
        async def who(_: Any) -> str:
            seen.append(name)
            await asyncio.sleep(0.01)
            return name

        return app

    apps = [build("a"), build("b")]
    async with apps[0], apps[1], create_client(url) as client:
        replies = await asyncio.gather(*(client.send("who", None) for _ in range(40)))
    assert len(seen) == 40 and set(replies) == {"a", "b"}


async def test_delete_resources_removes_the_queue(amqp: str) -> None:
    name = f"pbtest-{uuid.uuid4().hex[:12]}"
    app = echo_app(with_queue(amqp, name))
    await app.listen()
    await app.close()
    assert isinstance(app.transport, RabbitMQServerTransport)
    await app.transport.delete_resources()
    async with raw_channel(amqp) as channel:
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(name, passive=True)


async def test_connect_failure_is_a_transport_error(queue: str) -> None:
    client = create_client(f"amqp://guest:guest@127.0.0.1:1/?queue={queue}&connect_timeout=2")
    with pytest.raises(TransportError):
        await client.connect()
    await client.close()


# -- reconnection -------------------------------------------------------------------------


def _close_connections(name: str) -> int:
    """Make the broker close the connections whose connection_name is ``name``."""
    import subprocess

    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    closed = 0
    for line in listing.stdout.splitlines():
        if f'{{"connection_name","{name}"}}' in line:
            pid = line.split("\t", 1)[0]
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "polybus test"],
                capture_output=True,
                timeout=30,
            )
            closed += 1
    return closed


needs_rabbitmqctl = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="rabbitmqctl is not on this machine"
)


@needs_rabbitmqctl
async def test_client_connection_drop_fails_pending_and_recovers(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue)
    name = f"pbtest-client-{uuid.uuid4().hex[:8]}"
    async with echo_app(url):
        client = create_client(url, connection_name=name, reconnect_interval=0.2)
        statuses: list[str] = []
        client.watch_status(lambda status: statuses.append(status.value))
        async with client:
            assert await client.send("echo", 1) == 1
            pending = asyncio.ensure_future(client.send("slow", 4, timeout=30))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert await asyncio.to_thread(_close_connections, name) == 1
            with pytest.raises(TransportError):
                await asyncio.wait_for(pending, 5)
            assert time.monotonic() - started < 5
            assert await client.send("echo", 2, timeout=10) == 2  # reconnected, reply-to restored
            assert "reconnecting" in statuses and statuses[-1] == "connected"


@needs_rabbitmqctl
async def test_server_connection_drop_recovers_the_consumer(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue)
    name = f"pbtest-server-{uuid.uuid4().hex[:8]}"
    server = echo_app(url, connection_name=name, reconnect_interval=0.2)
    async with server, create_client(url) as client:
        assert await client.send("echo", 1) == 1
        assert await asyncio.to_thread(_close_connections, name) == 1
        assert await client.send("echo", 2, timeout=15) == 2  # queued until it is back


async def test_channel_error_fails_pending_and_the_channel_is_reopened(
    amqp: str, queue: str
) -> None:
    url = with_queue(amqp, queue)
    async with echo_app(url), create_client(url) as client:
        assert await client.send("echo", 1) == 1
        pending = asyncio.ensure_future(client.send("slow", 1.5, timeout=30))
        await asyncio.sleep(0.2)
        transport = client.transport
        assert isinstance(transport, RabbitMQClientTransport) and transport._link is not None
        # acking an unknown delivery tag is a channel error: the broker closes the channel
        await transport._link.raw.basic_ack(987654)
        with pytest.raises(TransportError):
            await asyncio.wait_for(pending, 5)
        assert await client.send("echo", 2, timeout=10) == 2  # new channel, reply-to restored
        assert client.status.value == "connected"


async def test_publisher_confirms(amqp: str, queue: str) -> None:
    url = with_queue(amqp, queue, publisher_confirms="true")
    received: list[Any] = []
    app = echo_app(url)

    @app.event_pattern("evt")
    def evt(data: Any) -> None:
        received.append(data)

    async with app, create_client(url) as client:
        assert await asyncio.gather(*(client.send("echo", i) for i in range(50))) == list(range(50))
        await client.emit("evt", {"n": 1})
        await wait_for(lambda: received == [{"n": 1}])


# -- exchanges (NestJS exchange, exchangeType, routingKey, wildcards, exchangeArguments) ----


@contextlib.asynccontextmanager
async def deleted_after(amqp: str, *exchanges: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        async with raw_channel(amqp) as channel:
            for name in exchanges:
                await channel.exchange_delete(name)


async def test_wildcards_route_by_pattern_over_a_topic_exchange(amqp: str, queue: str) -> None:
    """The server binds every route to the exchange named as its queue; a pattern no route
    equals goes to the first ``*``/``#`` route matching it, as NestJS routes it."""
    url = with_queue(amqp, queue, wildcards="true")
    app = Microservice(url)
    logged: list[tuple[Any, str | None]] = []

    @app.message_pattern("orders.special")
    def special(_: Any) -> str:
        return "exact"

    @app.message_pattern("orders.*")
    def star(_: Any, context: RabbitMQContext) -> list[Any]:
        return ["star", context.pattern, context.routing_key]

    @app.message_pattern("audit.#")
    def hash_(_: Any) -> str:
        return "hash"

    @app.message_pattern({"cmd": "sum"})
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    @app.event_pattern("log.#")
    def log(data: Any, context: RabbitMQContext) -> None:
        logged.append((data, context.routing_key))

    async with deleted_after(amqp, queue), app, create_client(url, timeout=10) as client:
        assert await client.send("orders.new", None) == ["star", "orders.*", "orders.new"]
        assert await client.send("orders.special", None) == "exact"
        assert await client.send("audit.a.b", None) == "hash"
        assert await client.send("audit", None) == "hash"
        assert await client.send({"cmd": "sum"}, [1, 2]) == 3
        await client.emit("log.x.y", 1)
        await wait_for(lambda: bool(logged))
        async with raw_channel(amqp) as channel:  # a topic exchange, durable, as NestJS's
            await channel.declare_exchange(queue, "topic", durable=True, passive=True)
    assert logged == [(1, "log.x.y")]


async def test_fanout_exchange_reaches_every_bound_queue(amqp: str, queue: str) -> None:
    """``exchange_type=fanout``: the client publishes to the exchange; every server's queue
    is bound to it with ``''``, so each one gets the event."""
    exchange = f"{queue}-fan"
    other = f"{queue}-other"
    received: dict[str, list[Any]] = {queue: [], other: []}

    def build(name: str) -> Microservice:
        app = Microservice(with_queue(amqp, name, exchange=exchange, exchange_type="fanout"))

        @app.event_pattern("tick")
        def tick(data: Any) -> None:
            received[name].append(data)

        return app

    client_url = with_queue(amqp, queue, exchange=exchange, exchange_type="fanout")
    try:
        async with (
            deleted_after(amqp, exchange),
            build(queue),
            build(other),
            create_client(client_url) as client,
        ):
            await client.emit("tick", 7)
            await wait_for(lambda: all(received.values()))
    finally:
        async with raw_channel(amqp) as channel:
            await channel.queue_delete(other)
    assert received == {queue: [7], other: [7]}


async def test_routing_key_binds_the_queue_and_exchange_arguments_are_declared(
    amqp: str, queue: str
) -> None:
    exchange = f"{queue}-direct"
    url = with_queue(amqp, queue, exchange=exchange, exchange_type="direct", routing_key="rk")
    options = RabbitMQOptions.from_url(url)
    options.exchange_arguments = {"alternate-exchange": f"{queue}-ae"}
    app = Microservice(transport=RabbitMQServerTransport(options, _json()))
    received: list[Any] = []

    @app.event_pattern("hello")
    def hello(data: Any) -> None:
        received.append(data)

    async with deleted_after(amqp, exchange), app:
        async with raw_channel(amqp) as channel:
            target = await channel.get_exchange(exchange)
            body = orjson.dumps({"pattern": "hello", "data": 1})
            await target.publish(aio_pika.Message(body), routing_key="other")  # not bound
            await target.publish(aio_pika.Message(body), routing_key="rk")
        await wait_for(lambda: bool(received))
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            async with raw_channel(amqp) as channel:  # declared with other arguments: 406
                await channel.declare_exchange(exchange, "direct", durable=True)
    assert received == [1]


async def test_wildcards_publish_with_the_pattern_as_routing_key(amqp: str, queue: str) -> None:
    """A string pattern is the routing key as is, an object one its JSON in the caller's
    key order (NestJS's ``JSON.stringify``, not the sorted route); over 255 bytes is a
    ``ProtocolError`` before anything is sent."""
    url = with_queue(amqp, queue, wildcards="true")
    async with deleted_after(amqp, queue), raw_channel(amqp) as channel:
        exchange = await channel.declare_exchange(queue, "topic", durable=True)
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(exchange, "#")
        async with create_client(url) as client:
            await client.emit("a.b", 1)
            await client.emit({"role": "x", "cmd": "y"}, 2)
            with pytest.raises(ProtocolError):
                await client.emit("k" * 256, 3)
        keys = []
        for _ in range(2):
            message = await tap.get(timeout=5, fail=False)
            while message is None:
                await asyncio.sleep(0.02)
                message = await tap.get(timeout=5, fail=False)
            keys.append(message.routing_key)
            await message.ack()
    assert keys == ["a.b", '{"role":"x","cmd":"y"}']


async def test_a_client_with_exchange_and_routing_key_binds_its_queue(
    amqp: str, queue: str
) -> None:
    """Without ``wildcards``/``fanout`` a NestJS client asserts its queue, binds it to
    ``exchange`` with ``routing_key``, and still publishes straight to the queue."""
    exchange = f"{queue}-direct"
    async with deleted_after(amqp, exchange):
        async with raw_channel(amqp) as channel:
            await channel.declare_exchange(exchange, "direct", durable=True)
        url = with_queue(amqp, queue, exchange=exchange, routing_key="rk")
        async with create_client(url) as client, raw_channel(amqp) as channel:
            await client.emit("direct", 1)
            target = await channel.get_exchange(exchange)
            body = orjson.dumps({"pattern": "bound", "data": 2})
            await target.publish(aio_pika.Message(body), routing_key="rk")
            await wait_for_depth(amqp, queue, 2)


async def wait_for_depth(amqp: str, queue: str, n: int) -> None:
    for _ in range(250):
        if await ready_count(amqp, queue) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"queue {queue!r} never held {n} messages")


@needs_rabbitmqctl
async def test_wildcards_survive_connection_drops(amqp: str, queue: str) -> None:
    """Both sides' connections dropped: the exchange and bindings are declared again on
    the new channels and wildcard routing goes on."""
    url = with_queue(amqp, queue, wildcards="true", reconnect_interval="0.2")
    tag = uuid.uuid4().hex[:8]
    app = Microservice(url, connection_name=f"pbtest-server-{tag}")

    @app.message_pattern("orders.*")
    def star(_: Any, context: RabbitMQContext) -> str | None:
        return context.routing_key

    async with (
        deleted_after(amqp, queue),
        app,
        create_client(url, connection_name=f"pbtest-client-{tag}") as client,
    ):
        assert await client.send("orders.a", None) == "orders.a"
        assert await asyncio.to_thread(_close_connections, f"pbtest-server-{tag}") == 1
        assert await asyncio.to_thread(_close_connections, f"pbtest-client-{tag}") == 1
        for _ in range(50):  # the client fails calls until its channel is back
            with contextlib.suppress(TransportError):
                assert await client.send("orders.b", None, timeout=15) == "orders.b"
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("never answered after the drops")
