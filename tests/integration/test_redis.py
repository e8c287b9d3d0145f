"""Redis transport: options, the NestJS wire format seen from a raw redis-py peer, shared
reply subscriptions, connection counts, foreign and malformed input, payload limits,
wildcards, reconnection, AUTH and TLS.

Needs Redis ($POLYBUS_REDIS_URL, default redis://127.0.0.1:6379). The reconnection, AUTH
and TLS tests start their own throwaway ``redis-server`` on a free port (skipped when the
binary is missing), so the shared broker is never restarted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from private_process import PrivateProcess, free_port

from polybus import (
    ConfigError,
    ConnectionStatus,
    Microservice,
    ProtocolError,
    RequestTimeout,
    TransportError,
    create_client,
)
from polybus.transports.redis import (
    FEATURES,
    RedisClientTransport,
    RedisContext,
    RedisOptions,
    RedisServerTransport,
)

redis_asyncio = pytest.importorskip("redis.asyncio")

pytestmark = pytest.mark.broker("redis")


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """Unique channel prefix of one test."""
    return f"pbtest.{uuid.uuid4().hex[:12]}."


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Any]:
    """A plain redis-py client, the way a foreign (or NestJS) peer talks."""
    client = redis_asyncio.Redis.from_url(url)
    yield client
    await client.aclose()


async def wait_until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def next_message(pubsub: Any, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return dict(message)
    raise AssertionError("no message in time")


async def numsub(raw: Any, channel: str) -> int:
    [(_, count)] = await raw.pubsub_numsub(channel)
    return int(count)


class PrivateRedis(PrivateProcess):
    """A throwaway redis-server on a free port (never the shared broker)."""

    def __init__(self, *args: str) -> None:
        port = free_port()
        command = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--port", str(port)] if "--tls-port" not in args else []
        super().__init__(command + list(args), port, within=10)
        self.args = args


@contextmanager
def private_redis(*args: str) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not available for a private instance")
    server = PrivateRedis(*args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def echo_app(url: str, prefix: str, **options: Any) -> Microservice:
    app = Microservice(url, **options)

    @app.message_pattern(f"{prefix}echo")
    def echo(data: Any) -> Any:
        return data

    @app.message_pattern({"cmd": f"{prefix}sum"})
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    @app.message_pattern(f"{prefix}slow")
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    return app


# -- options ------------------------------------------------------------------------------


def test_options_from_url() -> None:
    options = RedisOptions.from_url(
        "redis://alice:s%40cret@example.com:6380/3?wildcards=true&reply_linger=0.25"
        "&max_message_bytes=1024&retry_attempts=4"
    )
    assert (options.host, options.port, options.db) == ("example.com", 6380, 3)
    assert (options.username, options.password) == ("alice", "s@cret")
    assert options.wildcards is True and options.tls is False
    assert options.reply_linger == 0.25 and options.max_message_bytes == 1024
    assert options.retry_attempts == 4
    assert "s@cret" not in repr(options)
    assert options.address == "redis://example.com:6380/3"

    tls = RedisOptions.from_url("rediss://:pw@h?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none")
    assert tls.tls and tls.port == 6379 and tls.ssl_ca_certs == "/ca.pem"
    assert tls.ssl_cert_reqs == "none" and tls.username is None and tls.password == "pw"

    defaults = RedisOptions.from_url("redis://")
    assert (defaults.host, defaults.port, defaults.db) == ("localhost", 6379, 0)


@pytest.mark.parametrize(
    "bad",
    [
        "redis://h:1/notadb",
        "redis://h?wildcards=maybe",
        "redis://h?reply_linger=soon",
        "redis://h?nonsense=1",
        "http://h:6379",
        "redis://h:99999",
    ],
)
def test_bad_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        RedisOptions.from_url(bad)


def test_options_from_nest() -> None:
    options = RedisOptions.from_nest(
        {
            "host": "cache",
            "port": 6390,
            "password": "pw",
            "db": 2,
            "wildcards": True,
            "retryDelay": 500,
            "retryAttempts": 3,
            "connectTimeout": 2000,
            "tls": {"ca": "/etc/ca.pem", "rejectUnauthorized": False},
        }
    )
    assert (options.host, options.port, options.db, options.password) == ("cache", 6390, 2, "pw")
    assert options.wildcards and options.retry_delay == 0.5 and options.retry_attempts == 3
    assert options.connect_timeout == 2.0
    assert options.tls and options.ssl_ca_certs == "/etc/ca.pem"
    assert options.ssl_cert_reqs == "none"
    pem = RedisOptions.from_nest({"tls": {"ca": "-----BEGIN CERTIFICATE-----\nx\n"}})
    assert pem.ssl_ca_data is not None and pem.ssl_ca_certs is None


def test_features() -> None:
    assert FEATURES.name == "redis" and FEATURES.unknown_pattern == "timeout"
    assert FEATURES.broadcast and FEATURES.headers
    assert RedisClientTransport.features is FEATURES
    assert RedisServerTransport.features is FEATURES


# -- wire format --------------------------------------------------------------------------


async def test_request_and_event_bodies_as_nestjs_writes_them(
    url: str, prefix: str, raw: Any
) -> None:
    route = f'{{"cmd":"{prefix}sum"}}'  # the route string of {"cmd": prefix + "sum"}
    pubsub = raw.pubsub()
    await pubsub.subscribe(route, f"{prefix}order_placed")

    async with create_client(url, timeout=5) as client:
        call = asyncio.ensure_future(client.send({"cmd": f"{prefix}sum"}, [1, 2, 3, 4]))
        message = await next_message(pubsub)
        assert message["channel"] == route.encode()
        body = orjson.loads(message["data"])
        assert set(body) == {"pattern", "data", "id", "metadata"}
        assert body["pattern"] == {"cmd": f"{prefix}sum"} and body["data"] == [1, 2, 3, 4]
        # The deadline rides in NestJS v12's metadata (a Nest server ignores or exposes it).
        deadline = float(body["metadata"]["x-polybus-deadline"])
        assert 0 < deadline - time.time() <= 5.001  # sent with ms precision
        # A foreign responder answering the NestJS way on <channel>.reply.
        await raw.publish(f"{route}.reply", orjson.dumps({"id": "someone-else", "response": 0}))
        await raw.publish(
            f"{route}.reply", orjson.dumps({"response": 10, "isDisposed": True, "id": body["id"]})
        )
        assert await call == 10

        await client.emit(f"{prefix}order_placed", {"orderId": "o1"})
        event = orjson.loads((await next_message(pubsub))["data"])
        assert event == {"pattern": f"{prefix}order_placed", "data": {"orderId": "o1"}}
    await pubsub.aclose()


async def test_server_replies_on_the_request_channel_dot_reply(
    url: str, prefix: str, raw: Any
) -> None:
    route = f'{{"cmd":"{prefix}sum"}}'
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"{route}.reply", f"{prefix}echo.reply")
    async with echo_app(url, prefix):
        # NestJS sends the raw pattern in the body; the server dispatches by channel.
        request = {"pattern": {"cmd": f"{prefix}sum"}, "data": [1, 2], "id": "abc"}
        await raw.publish(route, orjson.dumps(request))
        reply = await next_message(pubsub)
        assert reply["channel"] == f"{route}.reply".encode()
        assert orjson.loads(reply["data"]) == {"response": 3, "isDisposed": True, "id": "abc"}

        # A handler's None crosses as null, as a NestJS handler's null does.
        await raw.publish(f"{prefix}echo", orjson.dumps({"pattern": "x", "data": None, "id": 7}))
        reply = await next_message(pubsub)
        assert orjson.loads(reply["data"]) == {"response": None, "isDisposed": True, "id": 7}
    await pubsub.aclose()


async def test_foreign_and_malformed_messages(
    url: str, prefix: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[tuple[Any, str]] = []
    app = echo_app(url, prefix)

    @app.event_pattern(f"{prefix}audit")
    def audit(data: Any, ctx: RedisContext) -> None:
        got.append((data, ctx.channel))

    async with app, create_client(url, timeout=5) as client:
        with caplog.at_level(logging.WARNING, logger="polybus.redis"):
            await raw.publish(f"{prefix}audit", b"not json at all")
            await raw.publish(f"{prefix}audit", orjson.dumps({"user": "bob", "action": "login"}))
            await wait_until(lambda: got)
        # A body with neither pattern nor data is a foreign event: the whole body is data.
        assert got == [({"user": "bob", "action": "login"}, f"{prefix}audit")]
        assert any("malformed" in r.getMessage() for r in caplog.records)
        assert await client.send(f"{prefix}echo", "still serving") == "still serving"


async def test_context_exposes_the_channel(url: str, prefix: str) -> None:
    app = Microservice(url)

    @app.message_pattern({"cmd": f"{prefix}where"})
    def where(_: Any, ctx: RedisContext) -> dict[str, Any]:
        return {"channel": ctx.channel, "pattern": ctx.pattern, "kind": ctx.transport_name}

    async with app, create_client(url, timeout=5) as client:
        reply = await client.send({"cmd": f"{prefix}where"}, None)
    route = f'{{"cmd":"{prefix}where"}}'
    assert reply == {"channel": route, "pattern": route, "kind": "redis"}


async def test_headers_and_deadline_travel_in_metadata(url: str, prefix: str, raw: Any) -> None:
    app = Microservice(url)
    seen: list[Any] = []

    @app.message_pattern(f"{prefix}meta")
    def meta(_: Any, ctx: RedisContext) -> dict[str, Any]:
        seen.append(ctx.deadline)
        return dict(ctx.headers or {})

    async with app, create_client(url, timeout=5) as client:
        headers = await client.send(f"{prefix}meta", None, headers={"x-trace": "t1", "k": "é"})
        assert headers.pop("x-polybus-deadline")
        assert headers == {"x-trace": "t1", "k": "é"}
        assert seen[0] is not None and 0 < seen[0] - time.time() <= 5.001  # ms precision

    # send_metadata=false: the bare NestJS envelope, no deadline on the server side.
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"{prefix}bare")
    async with create_client(url, send_metadata=False, timeout=0.5) as client:
        call = asyncio.ensure_future(client.send(f"{prefix}bare", 1, headers={"x": "y"}))
        body = orjson.loads((await next_message(pubsub))["data"])
        assert set(body) == {"pattern", "data", "id"}
        with pytest.raises(RequestTimeout):
            await call
    await pubsub.aclose()


# -- connections and subscriptions ---------------------------------------------------------


async def test_two_connections_per_side_whatever_the_load(url: str, prefix: str, raw: Any) -> None:
    name = f"pb{uuid.uuid4().hex[:10]}"
    async with (
        echo_app(url, prefix, client_name=f"{name}srv"),
        create_client(url, client_name=f"{name}cli", timeout=30) as client,
    ):
        routes = [f"{prefix}echo", {"cmd": f"{prefix}sum"}]
        calls = [client.send(routes[i % 2], [i] if i % 2 else i) for i in range(400)]
        assert await asyncio.gather(*calls) == list(range(400))
        clients = await raw.client_list()
        names = [c["name"] for c in clients]
        assert names.count(f"{name}cli") == 2
        assert names.count(f"{name}srv") == 2


async def test_reply_subscription_is_shared_and_dropped_after_linger(
    url: str, prefix: str, raw: Any
) -> None:
    reply_channel = f"{prefix}slow.reply"
    async with (
        echo_app(url, prefix),
        create_client(url, reply_linger=0.3, timeout=10) as client,
    ):
        calls = asyncio.gather(*(client.send(f"{prefix}slow", 0.3) for _ in range(50)))
        await asyncio.sleep(0.15)
        assert await numsub(raw, reply_channel) == 1  # one subscription for 50 requests
        assert await calls == [0.3] * 50
        assert await numsub(raw, reply_channel) == 1  # lingers...

        async def unsubscribed() -> bool:
            return await numsub(raw, reply_channel) == 0

        await wait_until(unsubscribed, timeout=3)
        # ...and a new call subscribes again.
        assert await client.send(f"{prefix}slow", 0) == 0


async def test_unknown_pattern_times_out_and_leaks_nothing(url: str, prefix: str) -> None:
    async with echo_app(url, prefix), create_client(url) as client:
        with pytest.raises(RequestTimeout):
            await client.send(f"{prefix}nobody", 1, timeout=0.3)
        assert client.pending_count == 0
        assert await client.send(f"{prefix}echo", 1) == 1


async def test_broadcast_every_server_answers_first_reply_wins(url: str, prefix: str) -> None:
    seen: list[str] = []
    apps = []
    for name in ("a", "b"):
        app = Microservice(url)

        @app.message_pattern(f"{prefix}who")
        def who(_: Any, name: str = name) -> str:
            seen.append(name)
            return name

        apps.append(app)
    for app in apps:
        await app.listen()
    try:
        async with create_client(url, timeout=5) as client:
            assert await client.send(f"{prefix}who", None) in ("a", "b")
            await wait_until(lambda: len(seen) == 2)
            assert client.pending_count == 0
    finally:
        for app in apps:
            await app.close()


# -- limits -------------------------------------------------------------------------------


async def test_max_message_bytes(url: str, prefix: str, raw: Any) -> None:
    got: list[Any] = []
    app = echo_app(url, prefix, max_message_bytes=2048)

    @app.event_pattern(f"{prefix}ev")
    def ev(data: Any) -> None:
        got.append(data)

    async with app, create_client(url, max_message_bytes=2048, timeout=5) as client:
        with pytest.raises(ProtocolError):
            await client.send(f"{prefix}echo", "x" * 4096)
        with pytest.raises(ProtocolError):
            await client.emit(f"{prefix}ev", "x" * 4096)
        assert client.pending_count == 0
        # Oversized input on the server side is dropped; small messages still flow.
        await raw.publish(f"{prefix}ev", orjson.dumps({"pattern": "ev", "data": "y" * 4096}))
        await raw.publish(f"{prefix}ev", orjson.dumps({"pattern": "ev", "data": "small"}))
        await wait_until(lambda: got)
        assert got == ["small"]


async def test_default_limit_stays_below_the_brokers(url: str, prefix: str) -> None:
    """Redis drops a subscriber whose output buffer passes 32 MiB (the pub/sub default), and
    with it the requests in flight: the default refuses such messages before publishing."""
    limit = RedisOptions().max_message_bytes
    assert limit <= 8 * 1024 * 1024  # Redis's pub/sub soft limit; the hard one is 32 MiB
    seen: list[int] = []
    app = Microservice(url, max_message_bytes=64 * 1024 * 1024)  # would take anything

    @app.message_pattern(f"{prefix}len")
    def length(data: str) -> int:
        seen.append(len(data))
        return len(data)

    async with app, create_client(url, timeout=10) as client:
        route = f"{prefix}len"
        big = asyncio.ensure_future(client.send(route, "x" * (33 * 1024 * 1024)))
        good = asyncio.ensure_future(client.send(route, "small"))
        with pytest.raises(ProtocolError, match="max_message_bytes"):
            await big
        assert await good == 5
        assert client.pending_count == 0

        with pytest.raises(ProtocolError) as info:  # learn the envelope's size around data
            await client.send(route, "x" * limit, timeout=None)
        overhead = int(str(info.value).split(" bytes")[0].rsplit(" ", 1)[1]) - limit
        at_limit = "x" * (limit - overhead)  # a body of exactly max_message_bytes
        assert await client.send(route, at_limit, timeout=None) == len(at_limit)
        with pytest.raises(ProtocolError):
            await client.send(route, at_limit + "x", timeout=None)
    assert seen == [5, len(at_limit)]


async def test_large_payload_with_astral_characters(url: str, prefix: str) -> None:
    payload = {"text": "é😀𝄞日本" * (1024 * 1024 // 14), "n": list(range(1000))}
    async with echo_app(url, prefix), create_client(url, timeout=30) as client:
        results = await asyncio.gather(*(client.send(f"{prefix}echo", payload) for _ in range(4)))
        assert all(result == payload for result in results)


# -- wildcards ----------------------------------------------------------------------------


async def test_wildcards_psubscribe_and_reply_on_the_concrete_channel(
    url: str, prefix: str
) -> None:
    app = Microservice(url, wildcards=True)

    @app.message_pattern(f"{prefix}user.*")
    def user(data: Any, ctx: RedisContext) -> dict[str, Any]:
        return {"channel": ctx.channel, "data": data}

    async with app, create_client(url, timeout=5) as client:
        reply = await client.send(f"{prefix}user.created", 1)
        assert reply == {"channel": f"{prefix}user.created", "data": 1}
        reply = await client.send(f"{prefix}user.deleted", 2)
        assert reply == {"channel": f"{prefix}user.deleted", "data": 2}


# -- connection failures ------------------------------------------------------------------


async def test_connect_failure_is_a_transport_error_without_the_password() -> None:
    port = free_port()
    client = create_client(f"redis://:hunter2@127.0.0.1:{port}", connect_timeout=2)
    with pytest.raises(TransportError) as info:
        await client.connect()
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(client)
    await client.close()
    app = Microservice(f"redis://127.0.0.1:{port}")
    with pytest.raises(TransportError):
        await app.listen()


async def test_auth() -> None:
    with private_redis("--requirepass", "s3cret") as server:
        good = f"redis://:s3cret@127.0.0.1:{server.port}"
        app = echo_app(good, "auth.")
        async with app, create_client(good, timeout=5) as client:
            assert await client.send("auth.echo", "in") == "in"
        bad = create_client(f"redis://:wrong@127.0.0.1:{server.port}")
        with pytest.raises(TransportError) as info:
            await bad.connect()
        assert "wrong" not in str(info.value)
        await bad.close()


async def test_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    args = (
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert_file),
        "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(ca_file),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not available for a private instance")
    server = PrivateRedis(*args)
    server.port = port
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS")
    try:
        url = f"rediss://127.0.0.1:{port}?ssl_ca_certs={ca_file}"
        async with echo_app(url, "tls."), create_client(url, timeout=5) as client:
            assert await client.send("tls.echo", "secret") == "secret"
        untrusted = create_client(f"rediss://127.0.0.1:{port}", connect_timeout=3)
        with pytest.raises(TransportError):
            await untrusted.connect()
        await untrusted.close()
    finally:
        server.stop()


async def test_reconnect_fails_pending_and_restores_subscriptions() -> None:
    with private_redis() as server:
        url = f"redis://127.0.0.1:{server.port}"
        async with echo_app(url, "rc."), create_client(url, timeout=10) as client:
            statuses: list[ConnectionStatus] = []
            client.watch_status(statuses.append)
            assert await client.send("rc.echo", 1) == 1
            pending = asyncio.ensure_future(client.send("rc.slow", 5, timeout=30))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            server.stop()
            with pytest.raises(TransportError):
                await pending
            assert time.monotonic() - started < 2  # failed promptly, not by timeout
            assert client.pending_count == 0
            await wait_until(lambda: ConnectionStatus.RECONNECTING in statuses)
            assert statuses[0] is ConnectionStatus.DISCONNECTED

            # down: the call waits for the link, but never beyond its own timeout
            started = time.monotonic()
            with pytest.raises((TransportError, RequestTimeout)):
                await client.send("rc.echo", 2, timeout=0.3)
            assert time.monotonic() - started < 0.3 + 0.5

            server.start()
            await wait_until(lambda: statuses[-1] is ConnectionStatus.CONNECTED, timeout=15)
            # The server reconnects on its own schedule: retry until it resubscribed.
            deadline = time.monotonic() + 15
            while True:
                try:
                    assert await client.send("rc.echo", 3, timeout=0.5) == 3
                    break
                except RequestTimeout:
                    if time.monotonic() > deadline:
                        raise
            assert await client.send({"cmd": "rc.sum"}, [1, 2]) == 3
            calls = await asyncio.gather(*(client.send("rc.echo", i) for i in range(200)))
            assert calls == list(range(200))


async def test_gives_up_after_retry_attempts() -> None:
    with private_redis() as server:
        url = f"redis://127.0.0.1:{server.port}?retry_attempts=2&retry_delay=0.05"
        async with create_client(url, timeout=5) as client:
            statuses: list[ConnectionStatus] = []
            client.watch_status(statuses.append)
            await client.connect()
            server.stop()
            await wait_until(lambda: ConnectionStatus.CLOSED in statuses, timeout=5)
            assert statuses == [
                ConnectionStatus.DISCONNECTED,
                ConnectionStatus.RECONNECTING,
                ConnectionStatus.CLOSED,
            ]
            with pytest.raises(TransportError, match="unreachable"):
                await client.send("x", 1)
