"""TCP under bad input, server restarts and deadlines (issue 6, properties 1, 2 and 5).

- garbage on one raw connection closes that connection only; a valid request on another
  connection is answered after every bad one (hypothesis drives the garbage);
- a client fed garbage replies fails with ``TransportError`` (corrupt stream) or
  ``RequestTimeout`` (well-formed frames nobody waits for), and works again on the next call;
- a client whose server restarts fails its in-flight requests at once, reports
  DISCONNECTED then CONNECTED, and succeeds on the next request without being recreated;
- the caller's deadline crosses in NestJS ``metadata`` and the server skips expired work.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybus import ConnectionStatus, Context, Microservice, create_client
from polybus.errors import ProtocolError, RequestTimeout, TransportError
from polybus.packets import DEADLINE_HEADER, decode_incoming
from polybus.serializers import JsonSerializer
from polybus.testing.faults import soak
from polybus.transports.tcp import FrameDecoder, TcpServerTransport, frame

JSON = JsonSerializer()


def build_service(url: str, **options: Any) -> tuple[Microservice, dict[str, Any]]:
    app = Microservice(url, **options)
    state: dict[str, Any] = {"count": 0, "deadlines": []}

    @app.message_pattern("echo")
    def echo(data: Any) -> Any:
        return data

    @app.message_pattern("slow")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @app.message_pattern("count")
    def count(_: Any) -> int:
        state["count"] += 1
        return int(state["count"])

    @app.message_pattern("deadline")
    def deadline(_: Any, ctx: Context) -> Any:
        state["deadlines"].append(ctx.deadline)
        return ctx.deadline

    @app.message_pattern("meta")
    def meta(_: Any, ctx: Context) -> Any:
        return ctx.headers

    return app, state


def port_of(app: Microservice) -> int:
    transport = app.transport
    assert isinstance(transport, TcpServerTransport)
    return transport.port


# -- a server in a background thread, for blocking raw sockets ------------------------------


class ThreadedServer:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app, self.state = build_service("tcp://127.0.0.1:0", max_message_bytes=1 << 16)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.app.listen(), self.loop).result(10)
        self.port = port_of(self.app)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.close(grace=1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def connections(self) -> int:
        transport = self.app.transport
        assert isinstance(transport, TcpServerTransport)
        return len(transport._connections)


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ThreadedServer]:
    server = ThreadedServer()
    server.start()
    yield server
    server.stop()


def _request(port: int, pattern: Any, data: Any, rid: str = "ok") -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(frame(orjson.dumps({"pattern": pattern, "data": data, "id": rid})))
        decoder = FrameDecoder(1 << 20)
        while True:
            chunk = sock.recv(65536)
            assert chunk, "server closed a healthy connection"
            for body in decoder.feed(chunk):
                reply = orjson.loads(body)
                if reply.get("id") == rid:
                    return reply


def _expect_close(wire: bytes) -> bool:
    """Oracle: does this byte stream break the protocol (so the server must hang up)?"""
    try:
        bodies = FrameDecoder(1 << 16).feed(wire)
    except ProtocolError:
        return True
    for body in bodies:
        try:
            decode_incoming(JSON, body)
        except ProtocolError:
            return True
    return False


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    end = time.monotonic() + within
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


documents = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
garbage = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.binary(min_size=1, max_size=60).map(lambda b: b"%d#%b" % (len(b), b)),  # bad JSON
    documents.map(lambda d: frame(orjson.dumps(d))),  # JSON of the wrong shape (mostly)
    st.binary(min_size=1, max_size=10).map(  # invalid UTF-8 inside a well-framed packet
        lambda b: b'%d#{"pattern":"\xff%b"}' % (len(b) + 15, b)
    ),
    st.sampled_from(
        [b"99999999#", b"70000#{", b"abc#{}", b"-1#{}", b"#", b"5#null", b"2#[]", b"4#true"]
    ),
    st.tuples(st.integers(1, 5), st.binary(max_size=30)).map(  # length too short
        lambda t: b'%d#{"pattern":"echo","data":1,"id":"x"}%b' % (t[0], t[1])
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire=garbage)
def test_garbage_closes_only_its_connection(threaded_server: ThreadedServer, wire: bytes) -> None:
    port = threaded_server.port
    bad = socket.create_connection(("127.0.0.1", port), timeout=5)
    with bad:
        bad.sendall(wire)
        if _expect_close(wire):
            assert _closed_by_peer(bad, 5), f"server kept a connection that sent {wire[:60]!r}"
    reply = _request(port, "echo", {"after": wire[:20].hex()})
    assert reply == {"response": {"after": wire[:20].hex()}, "isDisposed": True, "id": "ok"}


def test_bad_connection_does_not_disturb_a_concurrent_one(threaded_server: ThreadedServer) -> None:
    port = threaded_server.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as good:
        good.sendall(frame(b'{"pattern":"echo","data":1,"id":"a"}'))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as bad:
            bad.sendall(b"12#not json at all")
            assert _closed_by_peer(bad, 5)
        good.sendall(frame(b'{"pattern":"echo","data":2,"id":"b"}'))
        decoder = FrameDecoder(1 << 20)
        got: list[Any] = []
        while len(got) < 2:
            chunk = good.recv(65536)
            assert chunk
            got += [orjson.loads(b)["response"] for b in decoder.feed(chunk)]
        assert got == [1, 2]


def test_half_a_frame_then_eof_is_dropped(threaded_server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", threaded_server.port), timeout=5) as sock:
        sock.sendall(b'40#{"pattern":"count","da')
        sock.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(sock, 5)
    before = threaded_server.state["count"]
    assert _request(threaded_server.port, "count", None)["response"] == before + 1


# -- a client fed garbage -----------------------------------------------------------------


class FakeServer:
    """A raw TCP server: answers each request frame with the next of ``replies`` (bytes with
    ``$ID`` for the request's id, or a function of the id), then with ``"ok"``."""

    def __init__(self) -> None:
        self.replies: list[bytes | Callable[[str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(1 << 20)
        with contextlib.suppress(ConnectionError, ProtocolError):
            while chunk := await reader.read(65536):
                for body in decoder.feed(chunk):
                    packet = orjson.loads(body)
                    if self.replies:
                        reply = self.replies.pop(0)
                        rid = packet["id"]
                        writer.write(
                            reply(rid) if callable(reply) else reply.replace(b"$ID", rid.encode())
                        )
                    else:
                        ok = {"response": "ok", "isDisposed": True, "id": packet["id"]}
                        writer.write(frame(orjson.dumps(ok)))
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


BROKEN_STREAMS = {
    "corrupt-prefix": b"zz#{}",
    "invalid-json": frame(b'{"id":"$ID","response":'),
    "invalid-utf8": b'20#{"id":"$ID","r":"\xff\xfe"}',
    "over-limit": b"99999999#",
    "no-hash": b"1234567890123456",
}
IGNORED_REPLIES = {
    "unknown-id": frame(b'{"id":"nobody","response":1,"isDisposed":true}'),
    "foreign-value": frame(b"[1,2,3]"),
    "null": frame(b"null"),
}


@pytest.mark.parametrize("name", list(BROKEN_STREAMS))
async def test_client_fails_fast_on_a_broken_reply_stream(name: str) -> None:
    fake = FakeServer()
    await fake.start()
    fake.replies.append(BROKEN_STREAMS[name])
    client = create_client(f"tcp://127.0.0.1:{fake.port}", timeout=10, max_message_bytes=4096)
    try:
        started = time.monotonic()
        with pytest.raises(TransportError):
            await client.send("echo", 1)
        assert time.monotonic() - started < 2, "should fail at once, not at the timeout"
        assert client.pending_count == 0
        assert await client.send("echo", 2) == "ok"  # reconnected by itself
    finally:
        await client.close()
        await fake.close()


@pytest.mark.parametrize("name", list(IGNORED_REPLIES))
async def test_client_drops_replies_nobody_waits_for(name: str) -> None:
    fake = FakeServer()
    await fake.start()
    fake.replies.append(IGNORED_REPLIES[name])
    client = create_client(f"tcp://127.0.0.1:{fake.port}", timeout=0.3)
    try:
        with pytest.raises(RequestTimeout):
            await client.send("echo", 1)
        assert client.pending_count == 0
        assert await client.send("echo", 2) == "ok"  # same connection, still fine
    finally:
        await client.close()
        await fake.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=st.binary(min_size=1, max_size=80))
def test_client_survives_any_reply_bytes(reply: bytes) -> None:
    async def main() -> None:
        fake = FakeServer()
        await fake.start()
        fake.replies.append(reply)
        client = create_client(f"tcp://127.0.0.1:{fake.port}", timeout=0.2)
        try:
            started = time.monotonic()
            with contextlib.suppress(TransportError, RequestTimeout):
                await client.send("echo", 1)
            assert time.monotonic() - started < 1
            assert client.pending_count == 0
            if not _leaves_partial_frame(reply):  # else the stream waits for the rest
                assert await client.send("echo", 2) == "ok"
        finally:
            await client.close()
            await fake.close()

    asyncio.run(main())


def _leaves_partial_frame(wire: bytes) -> bool:
    decoder = FrameDecoder(64 * 1024 * 1024)
    try:
        decoder.feed(wire)
    except ProtocolError:
        return False
    return decoder.buffered > 0


# -- server restart -----------------------------------------------------------------------


async def test_client_recovers_from_a_server_restart() -> None:
    first, _ = build_service("tcp://127.0.0.1:0")
    await first.listen()
    port = port_of(first)
    client = create_client(f"tcp://127.0.0.1:{port}", timeout=10)
    seen: list[ConnectionStatus] = []
    client.watch_status(seen.append)
    try:
        assert await client.send("echo", "before") == "before"
        in_flight = [asyncio.ensure_future(client.send("slow", 5)) for _ in range(5)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await first.close(grace=0.1)  # the handlers are cancelled, the connection closed
        results = await asyncio.wait_for(
            asyncio.gather(*in_flight, return_exceptions=True), timeout=3
        )
        assert all(isinstance(r, TransportError) for r in results), results
        assert time.monotonic() - started < 2
        assert client.status is ConnectionStatus.DISCONNECTED
        assert client.pending_count == 0

        # Nobody listens: a call fails at once, it does not wait for its timeout.
        started = time.monotonic()
        with pytest.raises(TransportError):
            await client.send("echo", "nobody")
        assert time.monotonic() - started < 2

        second, _ = build_service(f"tcp://127.0.0.1:{port}")
        await second.listen()
        try:
            assert await client.send("echo", "after") == "after"  # same client object
            assert client.status is ConnectionStatus.CONNECTED
        finally:
            await second.close()
    finally:
        await client.close()
    assert seen[:4] == [
        ConnectionStatus.CONNECTING,
        ConnectionStatus.CONNECTED,
        ConnectionStatus.DISCONNECTED,  # the server went away
        ConnectionStatus.CONNECTED,  # the next call reconnected
    ], seen
    assert seen[-1] is ConnectionStatus.CLOSED


async def test_in_flight_replies_finishing_within_grace_still_arrive() -> None:
    app, _ = build_service("tcp://127.0.0.1:0")
    await app.listen()
    client = create_client(f"tcp://127.0.0.1:{port_of(app)}", timeout=10)
    try:
        calls = [asyncio.ensure_future(client.send("slow", 0.3)) for _ in range(3)]
        await asyncio.sleep(0.1)
        await app.close(grace=5)
        assert await asyncio.gather(*calls) == ["done"] * 3
    finally:
        await client.close()


async def test_aborted_client_socket_recovers_by_itself() -> None:
    app, _ = build_service("tcp://127.0.0.1:0")
    await app.listen()
    client = create_client(f"tcp://127.0.0.1:{port_of(app)}", timeout=10)
    try:
        assert await client.send("echo", 1) == 1
        pending = asyncio.ensure_future(client.send("slow", 5))
        await asyncio.sleep(0.1)
        transport = app.transport
        assert isinstance(transport, TcpServerTransport)
        for conn in list(transport._connections):
            assert conn.transport is not None
            conn.transport.abort()  # the connection is cut under the client
        with pytest.raises(TransportError):
            await asyncio.wait_for(pending, 2)
        assert await client.send("echo", 2) == 2
    finally:
        await client.close()
        await app.close(grace=0.1)


# -- deadlines ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "memory"])
async def test_deadline_crosses_and_expired_work_is_skipped(scheme: str) -> None:
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else "memory://deadline"
    app, state = build_service(url, max_concurrency=1)
    await app.listen()
    target = f"tcp://127.0.0.1:{port_of(app)}" if scheme == "tcp" else url
    client = create_client(target, timeout=10)
    try:
        before = time.time()
        deadline = await client.send("deadline", None, timeout=7)
        assert before + 6.999 <= deadline <= time.time() + 7.001  # epoch seconds, ms precision
        assert await client.send("deadline", None, timeout=None) is None
        assert await client.send("meta", None, headers={"x-trace": "t1"}, timeout=None) == {
            "x-trace": "t1"
        }

        # One slot: the count request waits behind a slow one, past its caller's timeout.
        busy = asyncio.ensure_future(client.send("slow", 0.6))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestTimeout):
            await client.send("count", None, timeout=0.2)
        assert await busy == "done"
        await asyncio.sleep(0.05)
        assert state["count"] == 0, "the server ran a request whose caller had given up"
        assert await client.send("count", None) == 1
    finally:
        await client.close()
        await app.close(grace=1)


async def test_metadata_can_be_turned_off() -> None:
    app, _ = build_service("tcp://127.0.0.1:0")
    await app.listen()
    client = create_client(f"tcp://127.0.0.1:{port_of(app)}?send_metadata=false")
    try:
        assert await client.send("deadline", None) is None
        assert await client.send("meta", None, headers={"x-a": "1"}) is None
    finally:
        await client.close()
        await app.close()


def test_deadline_header_name_matches_the_broker_adapters() -> None:
    assert DEADLINE_HEADER == "x-polybus-deadline"


# -- soak ---------------------------------------------------------------------------------


async def test_soak_across_a_server_restart() -> None:
    first, _ = build_service("tcp://127.0.0.1:0")
    await first.listen()
    port = port_of(first)
    client = create_client(f"tcp://127.0.0.1:{port}", timeout=2)
    servers = [first]

    async def restart() -> None:
        await servers[0].close(grace=0.1)
        second, _ = build_service(f"tcp://127.0.0.1:{port}")
        await second.listen()
        servers.append(second)

    try:
        stats = await soak(
            client,
            lambda i: client.send("echo", i, timeout=2),
            duration=2.0,
            concurrency=16,
            timeout=2.0,
            during=restart,
        )
    finally:
        await client.close()
        for app in servers[1:]:
            await app.close()
    summary = stats.as_dict()
    assert set(stats.outcomes) <= {"ok", "TransportError", "RequestTimeout"}, summary
    assert stats.late == 0, summary
    assert stats.outcomes.get("ok", 0) > 200, summary
    assert stats.pending_after == 0, summary


# -- a corrupt frame in the same read as valid ones (issue 12, item 3) ----------------------


def _replies_until_closed(sock: socket.socket) -> list[Any]:
    decoder = FrameDecoder(1 << 20)
    replies: list[Any] = []
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            replies += [orjson.loads(body) for body in decoder.feed(chunk)]
    return replies


CORRUPT_TAILS = {
    "corrupt-prefix": b"zz#{}",
    "over-limit": b"99999999#",
    "invalid-json": b"12#not json at all",
    "wrong-shape": frame(b"[1,2,3]"),
}


@pytest.mark.parametrize("tail", list(CORRUPT_TAILS))
def test_requests_before_a_corrupt_frame_in_one_write_are_answered(
    threaded_server: ThreadedServer, tail: str
) -> None:
    requests = b"".join(
        frame(orjson.dumps({"pattern": "echo", "data": i, "id": str(i)})) for i in range(20)
    )
    with socket.create_connection(("127.0.0.1", threaded_server.port), timeout=5) as sock:
        sock.sendall(requests + CORRUPT_TAILS[tail] + requests)  # nothing after it is read
        replies = _replies_until_closed(sock)  # returns once the server has closed
    assert sorted(r["response"] for r in replies) == list(range(20))
    assert all(r["id"] == str(r["response"]) for r in replies)
    assert _request(threaded_server.port, "echo", "still serving")["response"] == "still serving"


async def test_client_takes_replies_before_a_corrupt_frame_then_fails_the_rest() -> None:
    fake = FakeServer()
    await fake.start()
    fake.replies.append(  # one write: a good reply, then garbage
        lambda rid: (
            frame(orjson.dumps({"id": rid, "response": "first", "isDisposed": True})) + b"zz#{}"
        )
    )
    client = create_client(f"tcp://127.0.0.1:{fake.port}", timeout=10)
    try:
        first = asyncio.ensure_future(client.send("echo", 1))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(client.send("echo", 2))
        results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 3)
        assert results[0] == "first"
        assert isinstance(results[1], TransportError)
        assert client.pending_count == 0
        assert await client.send("echo", 3) == "ok"  # reconnected by itself
    finally:
        await client.close()
        await fake.close()
