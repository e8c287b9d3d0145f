"""Kafka-specific behaviour (the shared conformance suite covers the rest).

Request-reply across several client and server instances at once, consumer-group
rebalances in the middle of traffic, at-least-once events (commit only after the handler),
ordering per partition, exact value types between polybus peers, string-only patterns,
and options parsing. Broker: ``POLYBUS_KAFKA_URL`` (default ``kafka://127.0.0.1:19092``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from polybus import ConfigError, Context, Microservice, Record, create_client
from polybus.errors import describe_error
from polybus.packets import DEAD_LETTER_ERROR, DEAD_LETTER_ORIGIN

pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer

from polybus.serializers import JSON
from polybus.transports.kafka import KafkaContext, KafkaOptions, KafkaServerTransport
from polybus.transports.kafka._partition import Partition

pytestmark = pytest.mark.broker("kafka")


@pytest.fixture
def prefix() -> str:
    return f"pbk{uuid.uuid4().hex[:12]}"


class Service:
    """A test service: echo/whoami handlers, an event log, and instances in one group."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.group = f"{prefix}-group"
        self.handled: Counter[str] = Counter()
        self.events: list[tuple[str, Any, int, int]] = []
        self.apps: list[Microservice] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    def route(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def build(self, name: str, **options: Any) -> Microservice:
        app = Microservice(self.url, group_id=self.group, name=name, grace=0.2, **options)

        @app.message_pattern(self.route("echo"))
        async def echo(data: Any) -> Any:
            self.handled[repr(data)] += 1
            await asyncio.sleep(random.random() * 0.005)
            return {"data": data, "server": name}

        @app.message_pattern(self.route("same"))
        def same(data: Any) -> Any:
            return data

        @app.event_pattern(self.route("event"))
        async def event(data: Any, ctx: KafkaContext) -> None:
            self.events.append((name, data, ctx.partition, ctx.offset))

        @app.event_pattern(self.route("blocking"))
        async def blocking(data: Any, ctx: KafkaContext) -> None:
            self.events.append((name, data, ctx.partition, ctx.offset))
            self.started.set()
            await self.release.wait()

        self.apps.append(app)
        return app

    async def start(self, name: str, **options: Any) -> Microservice:
        app = self.build(name, **options)
        await app.listen()
        return app

    async def cleanup(self) -> None:
        for app in self.apps:
            await app.close(grace=0.5)
        if self.apps:
            await self.apps[0].transport.delete_resources()  # type: ignore[attr-defined]


@pytest.fixture
async def service(url: str, prefix: str) -> AsyncIterator[Service]:
    svc = Service(url, prefix)
    try:
        yield svc
    finally:
        await svc.cleanup()


async def _wait(predicate: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- request-reply across instances ----------------------------------------------------------


async def test_two_clients_and_two_servers_each_reply_reaches_its_caller(service: Service) -> None:
    await service.start("a")
    await service.start("b")
    clients = [create_client(service.url, timeout=60), create_client(service.url, timeout=60)]
    try:
        n = 400

        async def one(i: int) -> None:
            client = clients[i % 2]
            payload = {"i": i, "client": i % 2}
            reply = await client.send(service.route("echo"), payload)
            assert reply["data"] == payload

        await asyncio.gather(*(one(i) for i in range(n)))
        # each request was handled exactly once, by one of the two instances
        assert len(service.handled) == n and set(service.handled.values()) == {1}
        assert all(client.pending_count == 0 for client in clients)
        # both clients read their own reply partition; several may share one: still correct
        servers = Counter()
        for i in range(40):
            servers[(await clients[0].send(service.route("echo"), i))["server"]] += 1
        assert set(servers) <= {"a", "b"}
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("late_position", [False, True], ids=["", "position-answers-late"])
async def test_server_joining_and_leaving_mid_traffic_loses_no_request(
    service: Service, late_position: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.start("a")
    client = create_client(service.url, timeout=60)
    try:
        sent: list[int] = []
        results: dict[int, Any] = {}
        stop = asyncio.Event()

        async def traffic(worker: int) -> None:
            i = worker
            while not stop.is_set():
                sent.append(i)
                results[i] = (await client.send(service.route("echo"), i))["data"]
                i += 8
                await asyncio.sleep(0.01)

        workers = [asyncio.ensure_future(traffic(w)) for w in range(8)]
        await asyncio.sleep(1.0)
        if late_position:
            # aiokafka's position() answering only once the fetch loop got a new partition's
            # first records (then it names the offset after them): none may be skipped
            original = AIOKafkaConsumer.position

            async def late(self: Any, tp: Any) -> int:
                await asyncio.sleep(0.5)
                return int(await original(self, tp))

            monkeypatch.setattr(AIOKafkaConsumer, "position", late)
        b = await service.start("b")  # a rebalance while requests flow
        await asyncio.sleep(1.0)
        await b.close(grace=2.0)  # and another one as b leaves
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)  # no request failed or timed out
        assert sorted(results) == sorted(sent)
        assert all(results[i] == i for i in sent)
        assert all(service.handled[repr(i)] >= 1 for i in sent)
        assert client.pending_count == 0
    finally:
        await client.close()


# -- events: at-least-once, ordered per partition ---------------------------------------------


async def test_records_a_fetch_left_out_are_read_again(service: Service) -> None:
    # Producers writing to one partition at once make tansu leave a record out of a fetch
    # now and then (a few in 10,000 here); the server must read it again, not skip it.
    await service.start("a")
    clients = [create_client(service.url) for _ in range(8)]
    try:

        async def produce(c: int) -> None:
            for i in range(1500):
                await clients[c].emit(service.route("event"), Record((c, i), partition=0))

        await asyncio.gather(*(produce(c) for c in range(len(clients))))
        sent = {(c, i) for c in range(len(clients)) for i in range(1500)}

        def received() -> set[tuple[int, ...]]:
            return {tuple(data) for _, data, _, _ in service.events}

        with contextlib.suppress(AssertionError):  # the assert below names what is missing
            await _wait(lambda: received() >= sent, timeout=60)
        assert sent - received() == set()
        offsets = [offset for _, _, _, offset in service.events]
        assert len(offsets) == len(set(offsets)) == len(sent)  # each once, none skipped
    finally:
        for client in clients:
            await client.close()


async def test_event_is_committed_only_after_its_handler_finished(service: Service) -> None:
    a = await service.start("a")
    client = create_client(service.url)
    try:
        await client.emit(service.route("blocking"), {"n": 1})
        await asyncio.wait_for(service.started.wait(), 30)
        await a.close(grace=0.1)  # the handler is cancelled: its offset is not committed
        service.release.set()
        await service.start("b")
        await _wait(lambda: len(service.events) >= 2)
        (first, data1, part1, off1), (second, data2, part2, off2) = service.events[:2]
        assert (first, second) == ("a", "b")
        assert data1 == data2 == {"n": 1} and (part1, off1) == (part2, off2)
        await client.emit(service.route("event"), "after")
        await _wait(lambda: any(e[1] == "after" for e in service.events))
        assert sum(1 for e in service.events if e[1] == {"n": 1}) == 2  # not a third time
    finally:
        await client.close()


async def test_events_of_one_partition_are_handled_in_order(service: Service) -> None:
    app = service.build("a")
    order: list[int] = []

    @app.event_pattern(service.route("ordered"))
    async def ordered(n: int) -> None:
        await asyncio.sleep(random.random() * 0.01)
        order.append(n)

    await app.listen()
    client = create_client(service.url)
    try:
        for n in range(40):
            client.emit(service.route("ordered"), Record(n, key="same-key"))
        await _wait(lambda: len(order) >= 40)
        assert order == list(range(40))
    finally:
        await client.close()


# -- values, headers, patterns -----------------------------------------------------------------


async def test_values_keep_their_type_between_polybus_peers(service: Service, url: str) -> None:
    await service.start("a")
    async with create_client(url, timeout=30) as client:
        for value in [42, 1.5, True, None, "text", "[1, 2]", "{not json", b"\x00\x01", b"abc", [1]]:
            assert await client.send(service.route("same"), value) == value
    # without type hints values cross by NestJS's KafkaParser rule
    async with create_client(url, timeout=30, type_hints=False) as client:
        assert await client.send(service.route("same"), 42) == "42"
        assert await client.send(service.route("same"), "[1, 2]") == [1, 2]
        assert await client.send(service.route("same"), b"abc") == "abc"


async def test_context_and_reply_partition(service: Service, url: str) -> None:
    app = service.build("a")
    seen: list[KafkaContext] = []

    @app.message_pattern(service.route("ctx"))
    def ctx(data: Any, context: Context) -> str:
        assert isinstance(context, KafkaContext)
        seen.append(context)
        return "ok"

    await app.listen()
    async with create_client(url, timeout=30, reply_partition=2) as client:
        record = Record({"a": 1}, key="k1", headers={"x-one": "1"})
        assert await client.send(service.route("ctx"), record) == "ok"
    context = seen[0]
    assert context.topic == service.route("ctx") and context.key == "k1"
    assert context.headers is not None and context.headers["x-one"] == "1"
    assert context.headers["kafka_replyPartition"] == "2"
    assert context.headers["kafka_replyTopic"] == service.route("ctx") + ".reply"
    assert context.reply_partition == 2 and context.deadline is not None
    assert context.record.offset == context.offset


async def test_dead_letter_produces_the_record_as_it_arrived(service: Service, url: str) -> None:
    app = service.build("a")
    dlq = service.route("dlq")
    error = ValueError("no such order")
    taken: list[tuple[int, int]] = []
    refused: list[BaseException] = []

    @app.event_pattern(service.route("failing"))
    async def failing(data: Any, ctx: KafkaContext) -> None:
        taken.append((ctx.partition, ctx.offset))
        if data == "bad name":
            with pytest.raises(ConfigError) as info:
                await ctx.dead_letter("no/such topic", error)
            refused.append(info.value)
        await ctx.dead_letter(dlq, error)

    await app.listen()
    async with create_client(url) as client:
        await client.emit(service.route("failing"), Record({"n": 1}, key="k1", headers={"h": "v"}))
        await client.emit(service.route("failing"), "bad name")
        await _wait(lambda: len(taken) >= 2)
    netloc = url.split("://", 1)[1].split("?", 1)[0]
    consumer = AIOKafkaConsumer(dlq, bootstrap_servers=netloc, auto_offset_reset="earliest")
    await consumer.start()
    try:
        records: list[Any] = []
        for _ in range(30):
            batches = await consumer.getmany(timeout_ms=1000)
            records.extend(r for batch in batches.values() for r in batch)
            if len(records) >= 2:
                break
    finally:
        await consumer.stop()
    by_value = {r.value: r for r in records}
    first = by_value[b'{"n":1}']
    headers = dict(first.headers)
    assert first.key == b"k1" and headers["h"] == b"v"
    assert headers[DEAD_LETTER_ERROR] == describe_error(error).encode()
    origin = {f"{service.route('failing')}[{p}]@{o}".encode() for p, o in taken}
    assert headers[DEAD_LETTER_ORIGIN] in origin
    assert dict(by_value[b"bad name"].headers)[DEAD_LETTER_ORIGIN] in origin
    assert len(refused) == 1 and len(records) == 2 and len(taken) == 2  # each once


async def test_object_patterns_are_a_config_error(url: str, prefix: str) -> None:
    async with create_client(url) as client:
        with pytest.raises(ConfigError, match="Object patterns cannot be used on Kafka"):
            await client.send({"cmd": "sum"}, [1])
        with pytest.raises(ConfigError):
            await client.emit({"cmd": "sum"}, [1])
    app = Microservice(url, group_id=f"{prefix}-g")
    app.message_pattern({"cmd": "sum"})(lambda data: data)
    with pytest.raises(ConfigError):
        await app.listen()


# -- pure logic ---------------------------------------------------------------------------------


def test_commit_watermark_is_the_highest_contiguous_finished_offset() -> None:
    part = Partition(("t", 0), ordered=False, position=10)
    part.pending.extend([10, 11, 14, 15])
    assert not part.finish(11) and part.commit_at == 10
    assert not part.finish(15) and part.commit_at == 10
    assert part.finish(10) and part.commit_at == 12
    assert part.finish(14) and part.commit_at == 16 and not part.pending


def test_records_fetched_while_the_position_was_asked_for_are_kept() -> None:
    # aiokafka's position() may answer after the fetch loop got records of a just assigned
    # partition (it then says the offset after them): they start the partition, no skip.
    part = Partition(("t", 0), ordered=False)
    part.queue.extend(SimpleNamespace(offset=o) for o in (5, 6))
    assert part.start(7) == 5 and part.commit_at == part.committed == 5
    assert [r.offset for r in part.queue] == [5, 6]
    assert Partition(("t", 0), ordered=False).start(7) == 7
    unknown = Partition(("t", 0), ordered=False)
    unknown.queue.append(SimpleNamespace(offset=3))
    assert unknown.start(-1) == 3


def test_options_from_url_and_nest() -> None:
    options = KafkaOptions.from_url(
        "kafka://user:s%40cret@h1:9092,h2:9093?group_id=g&num_partitions=6&acks=all&ca=/ca.pem"
    )
    assert options.brokers == ["h1:9092", "h2:9093"] and options.group_id == "g"
    assert options.num_partitions == 6 and options.security_protocol == "SASL_PLAINTEXT"
    assert options.sasl_plain_password == "s@cret" and options.ssl_cafile == "/ca.pem"
    assert "s@cret" not in repr(options) and "cret" not in options.describe()
    assert options.producer_kwargs("client")["acks"] == "all"
    assert options.consumer_kwargs("server")["group_id"] == "g-server"
    assert options.client_kwargs("client")["client_id"] == "nestjs-consumer-client"
    nest = KafkaOptions.from_nest(
        {
            "client": {
                "brokers": ["b:1"],
                "clientId": "svc",
                "sasl": {"mechanism": "plain", "username": "u", "password": "p"},
            },
            "consumer": {"groupId": "grp", "sessionTimeout": 7000, "maxWaitTimeInMs": 50},
            "subscribe": {"fromBeginning": True},
            "send": {"acks": 1},
        }
    )
    assert nest.brokers == ["b:1"] and nest.client_id == "svc" and nest.group_id == "grp"
    assert nest.session_timeout_ms == 7000 and nest.fetch_max_wait_ms == 50
    assert nest.from_beginning and nest.producer_kwargs("server")["acks"] == 1
    assert nest.security_protocol == "SASL_PLAINTEXT" and "'p'" not in repr(nest)
    assert nest.consumer_kwargs("server")["group_id"] == "grp-server"
    with pytest.raises(ConfigError):
        KafkaOptions.from_url("kafka://host:notaport")


def test_a_group_id_ending_in_the_server_postfix_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="polybus.kafka"):
        plain = KafkaServerTransport(KafkaOptions(group_id="orders"), JSON)
        assert not caplog.records
        doubled = KafkaServerTransport(KafkaOptions(group_id="orders-server"), JSON)
    assert doubled.group_id == "orders-server-server" and plain.group_id == "orders-server"
    assert "already ends with '-server'" in caplog.text
    assert "group_id 'orders' + '-server'" in repr(plain)
