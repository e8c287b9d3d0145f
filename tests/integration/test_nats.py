"""NATS transport: options, the NestJS wire format seen from a raw nats-py peer, inbox
correlation, no-responders, headers and deadlines, queue groups, wildcards, malformed
input, payload limits and reconnection. Needs a NATS server ($POLYBUS_NATS_URL, default
nats://127.0.0.1:4222); the restart test also needs POLYBUS_NATS_RESTART=1 (it restarts
the local nats-server with the transport's ``restart_command``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from polybus import (
    ConfigError,
    ConnectionStatus,
    Microservice,
    NoRespondersError,
    ProtocolError,
    Record,
    TransportError,
    create_client,
)
from polybus.packets import DEADLINE_HEADER
from polybus.testing.brokers import require, restart_command
from polybus.transports.nats import (
    FEATURES,
    NatsClientTransport,
    NatsContext,
    NatsOptions,
    NatsServerTransport,
)

nats = pytest.importorskip("nats")

pytestmark = pytest.mark.broker("nats")


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """Unique subject prefix of one test."""
    return f"pbtest.{uuid.uuid4().hex[:12]}."


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Any]:
    """A plain nats-py connection, the way a foreign (or NestJS) peer talks."""
    nc = await nats.connect(url)
    yield nc
    await nc.close()


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def raw_responder(nc: Any, subject: str, respond: Callable[[Any], Awaitable[None]]) -> Any:
    sub = await nc.subscribe(subject, cb=respond)
    await nc.flush()
    return sub


# -- options ------------------------------------------------------------------------------


def test_url_single_server_defaults() -> None:
    options = NatsOptions.from_url("nats://127.0.0.1:4222")
    assert options.servers == ["nats://127.0.0.1:4222"]
    assert options.user is None and options.password is None and options.token is None
    assert options.queue is None and not options.tls
    assert NatsOptions.from_url("nats://example.org").servers == ["nats://example.org:4222"]


def test_url_cluster_credentials_and_query() -> None:
    options = NatsOptions.from_url(
        "nats://alice:s%40cret@h1:4222,h2:4223?queue=workers&max_message_bytes=1024"
        "&reconnect_time_wait=0.1&confirm_publish=true&name=svc"
    )
    assert options.servers == ["nats://h1:4222", "nats://h2:4223"]
    assert (options.user, options.password) == ("alice", "s@cret")
    assert options.queue == "workers"
    assert options.max_message_bytes == 1024
    assert options.reconnect_time_wait == 0.1
    assert options.confirm_publish is True
    assert options.name == "svc"
    text = repr(options) + repr(NatsClientTransport(options, _json()))
    assert "s@cret" not in text and "s%40cret" not in text


def test_url_token_tls_and_files() -> None:
    options = NatsOptions.from_url(
        "tls://t0k3n@nats.example:4443?ca=/ca.pem&cert=/c.pem&key=/k.pem"
    )
    assert options.servers == ["tls://nats.example:4443"]
    assert options.tls and options.token == "t0k3n" and options.user is None
    assert (options.ca_file, options.cert_file, options.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert "t0k3n" not in repr(options)
    creds = NatsOptions.from_url("nats://h:4222?creds_file=/u.creds&token=abc")
    assert creds.creds_file == "/u.creds" and creds.token == "abc"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379",
        "nats://h:notaport",
        "nats://h:4222?unknown_option=1",
        "nats://h:4222?max_message_bytes=lots",
        "nats://h:4222?confirm_publish=maybe",
    ],
)
def test_bad_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        NatsOptions.from_url(url)


def test_from_nest_options() -> None:
    options = NatsOptions.from_nest(
        {
            "servers": ["nats://a:4222", "b:4223"],
            "user": "u",
            "pass": "p",
            "queue": "q",
            "reconnectTimeWait": 250,
            "timeout": 1500,
            "inboxPrefix": "_MY",
            "headers": {"x-tenant": "t1"},
            "maxReconnectAttempts": 5,
        }
    )
    assert options.servers == ["nats://a:4222", "nats://b:4223"]
    assert (options.user, options.password, options.queue) == ("u", "p", "q")
    assert options.reconnect_time_wait == 0.25 and options.connect_timeout == 1.5
    assert options.inbox_prefix == "_MY" and options.headers == {"x-tenant": "t1"}
    assert options.max_reconnect_attempts == 5
    assert NatsOptions.from_nest({"servers": "nats://x:1"}).servers == ["nats://x:1"]


def test_features() -> None:
    assert FEATURES.name == "nats" and FEATURES.unknown_pattern == "no_responders"
    assert FEATURES.broadcast and FEATURES.queue_groups and FEATURES.headers
    assert FEATURES.dead_letter and not FEATURES.durable_events
    assert NatsClientTransport.features is FEATURES and NatsServerTransport.features is FEATURES


def _json() -> Any:
    from polybus import JsonSerializer

    return JsonSerializer()


# -- connecting ---------------------------------------------------------------------------


async def test_connect_failure_is_a_prompt_transport_error() -> None:
    client = create_client("nats://bob:hunter2@127.0.0.1:1?reconnect_time_wait=0.05")
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        await client.connect()
    assert time.monotonic() - started < 5
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    await client.close()


# -- the wire format ----------------------------------------------------------------------


async def test_request_and_event_on_the_wire(url: str, prefix: str, raw: Any) -> None:
    seen: list[Any] = []

    async def respond(msg: Any) -> None:
        seen.append(msg)
        body = orjson.loads(msg.data)
        if msg.reply:
            await raw.publish(
                msg.reply,
                orjson.dumps({"response": body["data"], "isDisposed": True, "id": body["id"]}),
            )

    route = '{"cmd":"' + prefix + 'sum","role":"math"}'
    await raw_responder(raw, route, respond)
    await raw_responder(raw, f"{prefix}placed", respond)
    async with create_client(url) as client:
        pattern = {"role": "math", "cmd": f"{prefix}sum"}
        assert await client.send(pattern, [1, 2], timeout=5) == [1, 2]
        await client.emit(f"{prefix}placed", {"n": 1})
        await wait_until(lambda: len(seen) == 2)
    request, event = seen
    # subject = route string (sorted keys), body pattern = the raw (unsorted) pattern
    assert request.subject == route
    body = orjson.loads(request.data)
    assert list(body) == ["pattern", "data", "id", "metadata"]
    assert body["pattern"] == pattern and list(body["pattern"]) == ["role", "cmd"]
    # one inbox per client, the request id as its last token
    assert request.reply.startswith("_INBOX.") and request.reply.endswith("." + body["id"])
    # without headers of its own, the deadline rides in NestJS v12's body metadata
    assert not request.headers
    assert float(body["metadata"][DEADLINE_HEADER]) > time.time()
    assert event.subject == f"{prefix}placed" and event.reply == ""
    assert orjson.loads(event.data) == {"pattern": f"{prefix}placed", "data": {"n": 1}}
    assert not event.headers


async def test_object_pattern_subject_is_the_route(url: str, prefix: str, raw: Any) -> None:
    subjects: list[str] = []

    async def respond(msg: Any) -> None:
        subjects.append(msg.subject)
        await raw.publish(msg.reply, b'{"response":1,"isDisposed":true}')

    await raw_responder(raw, '{"cmd":"' + prefix + 'x","role":"m"}', respond)
    async with create_client(url) as client:
        assert await client.send({"role": "m", "cmd": f"{prefix}x"}, None, timeout=5) == 1
    assert subjects == ['{"cmd":"' + prefix + 'x","role":"m"}']


async def test_replies_are_correlated_by_inbox_token_not_body_id(
    url: str, prefix: str, raw: Any
) -> None:
    async def respond(msg: Any) -> None:
        n = orjson.loads(msg.data)["data"]
        if n == 0:  # no id at all (a foreign value: delivered whole)
            await raw.publish(msg.reply, b'{"anything": 1}')
        elif n == 1:  # another request's id: the inbox token wins
            await raw.publish(msg.reply, b'{"id":"nope","response":"one","isDisposed":true}')
        else:  # a stream without ids
            await raw.publish(msg.reply, b'{"response":"a"}')
            await raw.publish(msg.reply, b'{"response":"b","isDisposed":true}')

    await raw_responder(raw, f"{prefix}r", respond)
    async with create_client(url) as client:
        assert await client.send(f"{prefix}r", 0, timeout=5) == {"anything": 1}
        assert await client.send(f"{prefix}r", 1, timeout=5) == "one"
        assert [x async for x in client.send(f"{prefix}r", 2, timeout=5)] == ["a", "b"]
        assert client.pending_count == 0


async def test_empty_reply_is_no_responders(url: str, prefix: str, raw: Any) -> None:
    async def respond(msg: Any) -> None:
        await raw.publish(msg.reply, b"")

    await raw_responder(raw, f"{prefix}empty", respond)
    async with create_client(url) as client:
        with pytest.raises(NoRespondersError):
            await client.send(f"{prefix}empty", {}, timeout=5)


async def test_no_responders_is_immediate(url: str, prefix: str) -> None:
    async with create_client(url) as client:
        started = time.monotonic()
        with pytest.raises(NoRespondersError) as info:
            await client.send(f"{prefix}nobody", {}, timeout=30)
        assert time.monotonic() - started < 2
        assert f"{prefix}nobody" in str(info.value)
        assert client.pending_count == 0


async def test_undecodable_reply_fails_the_request(url: str, prefix: str, raw: Any) -> None:
    async def respond(msg: Any) -> None:
        await raw.publish(msg.reply, b"not json")

    await raw_responder(raw, f"{prefix}junk", respond)
    async with create_client(url) as client:
        with pytest.raises(ProtocolError):
            await client.send(f"{prefix}junk", {}, timeout=5)


async def test_server_answers_a_nest_style_inbox(url: str, prefix: str, raw: Any) -> None:
    """A NestJS client subscribes to a fresh inbox per request and publishes with it."""
    app = Microservice(url)

    @app.message_pattern({"cmd": f"{prefix}sum"})
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    @app.message_pattern(f"{prefix}none")
    def nothing(_: Any) -> None:
        return None

    async with app:
        for route, data, expected in (
            ('{"cmd":"' + prefix + 'sum"}', [1, 2, 3, 4], {"response": 10, "isDisposed": True}),
            # None crosses as null, as a NestJS handler's null does
            (f"{prefix}none", {}, {"response": None, "isDisposed": True}),
        ):
            inbox = raw.new_inbox()
            sub = await raw.subscribe(inbox, max_msgs=1)
            body = orjson.dumps({"pattern": {"cmd": f"{prefix}sum"}, "data": data, "id": "abc123"})
            await raw.publish(route, body, reply=inbox)
            msg = await sub.next_msg(timeout=5)
            assert orjson.loads(msg.data) == {**expected, "id": "abc123"}
            assert not msg.headers  # NestJS never sets headers on replies


# -- headers, deadline and context --------------------------------------------------------


async def test_headers_deadline_and_context(url: str, prefix: str) -> None:
    app = Microservice(url)
    seen: list[NatsContext] = []

    @app.message_pattern(f"{prefix}ctx")
    def ctx(data: Any, context: NatsContext) -> Any:
        seen.append(context)
        return {"headers": context.headers, "deadline": context.deadline}

    async with app, create_client(url) as client:
        before = time.time()
        result = await client.send(
            f"{prefix}ctx", Record({"a": 1}, headers={"x-trace": "t-1"}), timeout=7
        )
        assert result["headers"]["x-trace"] == "t-1"
        assert before + 6 < result["deadline"] < time.time() + 7.1
        assert result["headers"][DEADLINE_HEADER] == f"{result['deadline']:.3f}"
    (context,) = seen
    assert context.subject == f"{prefix}ctx" and context.pattern == f"{prefix}ctx"
    assert context.reply.startswith("_INBOX.")
    assert context.msg.data and context.is_request
    assert context.transport_name == "nats"


async def test_client_level_headers_and_no_deadline(url: str, prefix: str, raw: Any) -> None:
    seen: list[Any] = []

    async def respond(msg: Any) -> None:
        seen.append(msg.headers)
        await raw.publish(msg.reply, b'{"response":1,"isDisposed":true}')

    await raw_responder(raw, f"{prefix}h", respond)
    client = create_client(url, headers={"x-tenant": "t1", "x-a": "base"}, send_deadline=False)
    async with client:
        await client.send(f"{prefix}h", 1, timeout=5, headers={"x-a": "call"})
        await client.send(f"{prefix}h", 1, timeout=5)
    assert seen == [{"x-tenant": "t1", "x-a": "call"}, {"x-tenant": "t1", "x-a": "base"}]


async def test_expired_deadline_is_skipped(url: str, prefix: str, raw: Any) -> None:
    app = Microservice(url)
    calls: list[Any] = []

    @app.message_pattern(f"{prefix}late")
    def late(data: Any) -> int:
        calls.append(data)
        return 1

    async with app:
        inbox = raw.new_inbox()
        sub = await raw.subscribe(inbox)
        body = orjson.dumps({"pattern": f"{prefix}late", "data": 1, "id": "x1"})
        await raw.publish(
            f"{prefix}late", body, reply=inbox, headers={DEADLINE_HEADER: f"{time.time() - 5:.3f}"}
        )
        body = orjson.dumps({"pattern": f"{prefix}late", "data": 2, "id": "x2"})
        await raw.publish(f"{prefix}late", body, reply=inbox, headers={DEADLINE_HEADER: "garbage"})
        msg = await sub.next_msg(timeout=5)
        assert orjson.loads(msg.data)["id"] == "x2"
    assert calls == [2]


# -- server behaviour ---------------------------------------------------------------------


async def test_malformed_bodies_are_dropped_and_serving_goes_on(
    url: str, prefix: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = Microservice(url)
    events: list[Any] = []

    @app.message_pattern(f"{prefix}echo")
    def echo(data: Any) -> Any:
        return data

    @app.event_pattern(f"{prefix}ev")
    def ev(data: Any) -> None:
        events.append(data)

    async with app, create_client(url) as client:
        await raw.publish(f"{prefix}echo", b"{not json", reply=raw.new_inbox())
        await raw.publish(f"{prefix}echo", b"", reply=raw.new_inbox())
        # a foreign JSON body (neither pattern nor data) is an event for the subject's handler
        await raw.publish(f"{prefix}ev", b'{"foreign": true}')
        await raw.flush()
        assert await client.send(f"{prefix}echo", "still here", timeout=5) == "still here"
        await wait_until(lambda: events == [{"foreign": True}])
    assert "malformed" in caplog.text


async def test_wildcard_route_dispatches_on_the_subscription(url: str, prefix: str) -> None:
    app = Microservice(url)

    @app.message_pattern(f"{prefix}orders.*")
    def orders(data: Any, context: NatsContext) -> list[str]:
        return [context.pattern, context.subject]

    async with app, create_client(url) as client:
        assert await client.send(f"{prefix}orders.eu", None, timeout=5) == [
            f"{prefix}orders.*",
            f"{prefix}orders.eu",
        ]


async def test_invalid_subject_is_a_config_error(url: str, prefix: str) -> None:
    async with create_client(url) as client:
        with pytest.raises(ConfigError):
            await client.send(f"{prefix}has space", 1, timeout=5)
        assert client.pending_count == 0
    app = Microservice(url)

    @app.message_pattern(f"{prefix}bad subject")
    def bad(_: Any) -> None:
        return None

    with pytest.raises(ConfigError):
        await app.listen()


async def test_queue_groups_balance_and_default_broadcasts(url: str, prefix: str) -> None:
    handled: list[str] = []
    servers = []
    for name in ("s0", "s1"):
        app = Microservice(url)

        @app.message_pattern(f"{prefix}who", queue="per-handler")
        def who(_: Any, name: str = name) -> str:
            return name

        @app.message_pattern(f"{prefix}broadcast")
        def everyone(_: Any, name: str = name) -> str:
            handled.append(name)
            return name

        servers.append(app)
        await app.listen()
    try:
        async with create_client(url) as client:
            # a queue group per handler (@message_pattern(p, queue=...)): one server each
            answers = [await client.send(f"{prefix}who", None, timeout=5) for _ in range(40)]
            assert set(answers) == {"s0", "s1"} and len(answers) == 40
            # no queue group (NestJS's default): every server handles it, first reply wins
            assert await client.send(f"{prefix}broadcast", None, timeout=5) in ("s0", "s1")
            await wait_until(lambda: sorted(handled) == ["s0", "s1"])
            assert client.pending_count == 0
    finally:
        for server in servers:
            await server.close()


async def test_server_level_queue_option(url: str, prefix: str) -> None:
    hits: dict[str, int] = {"a": 0, "b": 0}
    apps = []
    for name in ("a", "b"):
        app = Microservice(url, queue=f"{prefix}q")

        @app.event_pattern(f"{prefix}work")
        def work(_: Any, name: str = name) -> None:
            hits[name] += 1

        apps.append(app)
        await app.listen()
    try:
        async with create_client(url) as client:
            for i in range(40):
                await client.emit(f"{prefix}work", i)
            await wait_until(lambda: hits["a"] + hits["b"] == 40)
            await asyncio.sleep(0.1)
        assert hits["a"] + hits["b"] == 40 and hits["a"] and hits["b"]
    finally:
        for app in apps:
            await app.close()


async def test_events_broadcast_without_queue_group(url: str, prefix: str) -> None:
    received: list[str] = []
    apps = []
    for name in ("a", "b"):
        app = Microservice(url)

        @app.event_pattern(f"{prefix}news")
        def news(_: Any, name: str = name) -> None:
            received.append(name)

        apps.append(app)
        await app.listen()
    try:
        async with create_client(url, confirm_publish=True) as client:
            await client.emit(f"{prefix}news", 1)
            await wait_until(lambda: sorted(received) == ["a", "b"])
    finally:
        for app in apps:
            await app.close()


# -- payloads -----------------------------------------------------------------------------


async def test_payload_fidelity_up_to_max_payload(url: str, prefix: str) -> None:
    app = Microservice(url)

    @app.message_pattern(f"{prefix}echo")
    def echo(data: Any) -> Any:
        return data

    async with app, create_client(url) as client:
        samples = [
            {"text": "héllo – ✓ 😀 𝄞 日本語 עברית", "emoji": "👩‍👩‍👧‍👦"},
            {"big": "é😀𝄞x" * (900 * 1024 // 11)},
            {"ints": [0, -1, 2**53 - 1], "float": 0.1 + 0.2, "empty": {}, "list": [], "n": None},
        ]
        for sample in samples:
            assert await client.send(f"{prefix}echo", sample, timeout=30) == sample
        # above the server's max_payload: a clear error, no hang
        with pytest.raises(ProtocolError, match="max_payload"):
            await client.send(f"{prefix}echo", "x" * (2 * 1024 * 1024), timeout=30)
        assert client.pending_count == 0


async def test_max_message_bytes_is_enforced(url: str, prefix: str) -> None:
    async with create_client(url, max_message_bytes=1000) as client:
        with pytest.raises(ProtocolError, match="max_message_bytes"):
            await client.send(f"{prefix}x", "y" * 2000, timeout=5)
        with pytest.raises(ProtocolError, match="max_message_bytes"):
            await client.emit(f"{prefix}x", "y" * 2000)


# -- connection loss ----------------------------------------------------------------------


async def test_close_fails_pending_and_reports_closed(url: str, prefix: str) -> None:
    app = Microservice(url)

    @app.message_pattern(f"{prefix}slow")
    async def slow(_: Any) -> int:
        await asyncio.sleep(10)
        return 1

    statuses: list[ConnectionStatus] = []
    async with app:
        client = create_client(url)
        client.watch_status(statuses.append)
        await client.connect()
        pending = asyncio.ensure_future(client.send(f"{prefix}slow", None, timeout=30))
        await asyncio.sleep(0.1)
        await client.close()
        with pytest.raises(TransportError):
            await pending
        await app.close(grace=0)
    assert statuses[-1] is ConnectionStatus.CLOSED


@pytest.mark.faults
async def test_broker_restart_fails_pending_and_recovers(url: str, prefix: str) -> None:
    command = restart_command("nats")
    if command is None:
        require("restarts the nats-server: set POLYBUS_NATS_RESTART to its restart command")
        return
    app = Microservice(url)

    @app.message_pattern(f"{prefix}slow")
    async def slow(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    statuses: list[ConnectionStatus] = []
    async with app, create_client(url, timeout=10) as client:
        client.watch_status(statuses.append)
        assert await client.send(f"{prefix}slow", 0) == 0
        pending = asyncio.ensure_future(client.send(f"{prefix}slow", 3))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*command)
        assert await proc.wait() == 0
        with pytest.raises(TransportError):
            await pending
        assert time.monotonic() - started < 2
        for _ in range(40):
            try:
                assert await client.send(f"{prefix}slow", 0, timeout=2) == 0
                break
            except (TransportError, NoRespondersError):
                await asyncio.sleep(0.25)
        else:
            raise AssertionError("no successful request after the restart")
    assert ConnectionStatus.RECONNECTING in statuses
    assert statuses.index(ConnectionStatus.RECONNECTING) < len(statuses) - 1
