"""Bad input never escapes as anything but a typed error (issue 6, property 1).

Property-based tests (hypothesis, a fixed budget so CI stays fast) over every place bytes
from the network enter polybus: the TCP frame decoder, both serializers, the envelope
decoders (``decode_incoming`` / ``decode_reply``), the client's reply intake (unknown ids,
replies for finished requests) and the server's dispatch of packets of any shape. Each
input is either accepted, refused with ``ProtocolError``, or dropped with a logged
warning; no other exception and no failed handler task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybus import ClientProxy, Context, Microservice, create_client
from polybus.errors import ConfigError, ProtocolError, RequestTimeout, TransportError
from polybus.packets import (
    DEADLINE_HEADER,
    MISSING,
    Reply,
    Request,
    decode_incoming,
    decode_reply,
    encode_reply,
    encode_request,
    parse_deadline,
)
from polybus.serializers import JsonSerializer, MsgpackSerializer, resolve_serializer
from polybus.transports.memory import MemoryServerTransport
from polybus.transports.tcp import FrameDecoder, frame

BUDGET = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = JsonSerializer()
MSGPACK = MsgpackSerializer()
SERIALIZERS = [JSON, MSGPACK]

# -- strategies ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
envelope_keys = st.sampled_from(
    ["id", "pattern", "data", "err", "response", "isDisposed", "status", "metadata", "x", ""]
)
# Objects that look like packets: the keys polybus reads, with values of any type.
packet_like = st.dictionaries(envelope_keys, json_values, max_size=6)
documents = st.one_of(json_values, packet_like)


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, byte flips and insertions of a valid document."""
    n = len(data)
    return st.one_of(
        st.integers(0, max(n - 1, 0)).map(lambda i: data[:i]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)).map(
            lambda t: data[: t[0]] + bytes([t[1]]) + data[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]
        ),
    )


def bad_bytes(serializer: Any) -> st.SearchStrategy[bytes]:
    """Garbage, invalid UTF-8, and broken encodings of real packets."""
    valid = documents.map(serializer.dumps)
    return st.one_of(
        st.binary(max_size=120),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(
            [b"\xff\xfe", b'"\xed\xa0\x80"', b"[" * 2000, b"{" * 50, b'{"a":1e999}', b"\x00"]
        ),
        valid.flatmap(_mutations),
        valid,
    )


def _only_protocol_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a ``ProtocolError`` is fine (returns MISSING), anything else fails."""
    try:
        return fn(*args, **kwargs)
    except ProtocolError:
        return MISSING


# -- serializers --------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
@BUDGET
@given(data=st.data())
def test_serializer_loads_raises_only_protocol_error(serializer: Any, data: Any) -> None:
    raw = data.draw(bad_bytes(serializer))
    _only_protocol_errors(serializer.loads, raw)
    _only_protocol_errors(serializer.loads, memoryview(raw))
    _only_protocol_errors(serializer.loads, bytearray(raw))


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
@BUDGET
@given(
    value=st.one_of(
        documents,
        st.integers(2**64, 2**80),  # outside both formats' integer range
        st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
        st.builds(object),
        st.just({("tuple", "key"): 1}),
    )
)
def test_serializer_dumps_raises_only_protocol_error(serializer: Any, value: Any) -> None:
    _only_protocol_errors(serializer.dumps, value)


def test_no_unsafe_deserializer_is_known() -> None:
    for name in ("pickle", "dill", "marshal", "yaml", "cloudpickle"):
        with pytest.raises(ConfigError):
            resolve_serializer(name)


# -- envelopes ----------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
@pytest.mark.parametrize("channel", [None, "orders.placed"])
@BUDGET
@given(data=st.data())
def test_decode_incoming_raises_only_protocol_error(
    serializer: Any, channel: str | None, data: Any
) -> None:
    raw = data.draw(bad_bytes(serializer))
    incoming = _only_protocol_errors(decode_incoming, serializer, raw, channel)
    if incoming is MISSING:
        return
    if channel is not None:
        assert incoming.pattern == channel  # dispatch by channel never reads the body
    else:
        assert incoming.pattern is not None
    assert incoming.metadata is None or all(
        isinstance(k, str) and isinstance(v, str) for k, v in incoming.metadata.items()
    )


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
@BUDGET
@given(data=st.data())
def test_decode_reply_raises_only_protocol_error(serializer: Any, data: Any) -> None:
    raw = data.draw(bad_bytes(serializer))
    reply = _only_protocol_errors(decode_reply, serializer, raw)
    if reply is not MISSING:
        assert reply.id is None or isinstance(reply.id, str)
        assert isinstance(reply.disposed, bool)


@BUDGET
@given(
    headers=st.one_of(
        st.none(),
        st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
        st.builds(lambda v: {DEADLINE_HEADER: v}, json_values),
        st.builds(lambda v: {DEADLINE_HEADER: v}, st.sampled_from(["nan", "inf", "-inf", "1e999"])),
    )
)
def test_parse_deadline_never_raises(headers: Any) -> None:
    deadline = parse_deadline(headers)
    assert deadline is None or math.isfinite(deadline)


def test_deadline_and_headers_ride_in_nestjs_metadata() -> None:
    request = Request("r1", {"cmd": "x"}, '{"cmd":"x"}', [1], {"x-a": "1"}, 1700000000.25)
    plain = orjson.loads(encode_request(JSON, request))
    assert plain == {"pattern": {"cmd": "x"}, "data": [1], "id": "r1"}  # NestJS v11 shape
    packet = orjson.loads(encode_request(JSON, request, metadata=True))
    assert packet["metadata"] == {"x-a": "1", DEADLINE_HEADER: "1700000000.250"}
    incoming = decode_incoming(JSON, orjson.dumps(packet))
    assert incoming.metadata == packet["metadata"]
    assert parse_deadline(incoming.metadata) == 1700000000.25
    # NestJS's v12 envelope check: metadata never appears in replies.
    assert b"metadata" not in encode_reply(JSON, Reply("r1", 1, None, True))


# -- TCP framing --------------------------------------------------------------------------


def _frames_of(bodies: list[bytes]) -> bytes:
    return b"".join(frame(b) for b in bodies)


wire_garbage = st.one_of(
    st.binary(max_size=200),
    # right framing, wrong content
    st.binary(max_size=60).map(lambda b: b"%d#%b" % (len(b), b)),
    # wrong lengths around a valid body
    st.tuples(st.integers(-3, 3), documents.map(JSON.dumps)).map(
        lambda t: b"%d#%b" % (max(len(t[1]) + t[0], 0), t[1])
    ),
    # oversized and non-numeric prefixes
    st.sampled_from([b"99999999999#", b"1e3#{}", b" 2#{}", b"+2#{}", b"0x10#", b"#", b"##"]),
    # valid frames followed by garbage
    st.tuples(st.lists(documents.map(JSON.dumps), max_size=3), st.binary(max_size=40)).map(
        lambda t: _frames_of(t[0]) + t[1]
    ),
)


@BUDGET
@given(wire=wire_garbage, cuts=st.lists(st.integers(0, 300), max_size=4))
def test_frame_decoder_raises_only_protocol_error(wire: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(1 << 16)
    last = 0
    with contextlib.suppress(ProtocolError):
        for cut in [*sorted(c for c in cuts if c <= len(wire)), len(wire)]:
            for body in decoder.feed(wire[last:cut]):
                # whatever the decoder hands out is valid UTF-8 of the announced length
                body.decode("utf-8")
                _only_protocol_errors(decode_incoming, JSON, body)
                _only_protocol_errors(decode_reply, JSON, body)
            last = cut


@BUDGET
@given(bodies=st.lists(documents.map(JSON.dumps), min_size=1, max_size=4), drop=st.integers(1, 8))
def test_truncated_stream_yields_only_whole_frames(bodies: list[bytes], drop: int) -> None:
    wire = _frames_of(bodies)
    decoder = FrameDecoder(1 << 20)
    out = decoder.feed(wire[: max(len(wire) - drop, 0)])
    assert out == bodies[: len(out)]  # a prefix of the frames, never a partial one
    assert len(out) < len(bodies)


def test_frame_length_limit_is_checked_before_buffering() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(b"1025#")
    assert FrameDecoder(1024).feed(b"1024#") == []


# -- client reply intake ------------------------------------------------------------------


class _NullTransport:
    """A client transport that sends nothing: replies are injected by the test."""

    from polybus.transports.memory import FEATURES as features

    async def connect(self, sink: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def request(self, request: Any) -> Any:
        return lambda: None

    async def publish_event(self, event: Any) -> None:
        pass


replies = st.builds(
    Reply,
    id=st.one_of(st.none(), st.text(max_size=8)),
    response=st.one_of(st.just(MISSING), json_values),
    err=st.one_of(st.none(), json_values),
    disposed=st.booleans(),
    status=st.one_of(st.none(), st.just("error")),
)


@BUDGET
@given(batch=st.lists(replies, max_size=20))
def test_unknown_and_late_replies_are_dropped(batch: list[Reply]) -> None:
    async def main() -> None:
        client = ClientProxy(_NullTransport(), timeout=0.001)  # type: ignore[arg-type]
        with pytest.raises(RequestTimeout):
            await client.send("slow", 1)  # times out: its id is now unknown
        for reply in batch:
            client.on_reply(reply)  # never raises, whatever the shape
        for reply in batch:
            client.on_reply(Reply(f"{reply.id}-late", reply.response, reply.err, True))
        assert client.pending_count == 0
        client.on_request_error("no-such-id", TransportError("x"))
        client.on_connection_lost(OSError("y"))
        await client.close()

    asyncio.run(main())


# -- server dispatch of packets of any shape ----------------------------------------------


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "polybus.server" and record.getMessage() == "handler task failed":
            self.records.append(record)


msgpack_only = st.one_of(
    st.binary(max_size=8),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    st.builds(lambda s: msgpack.Timestamp(s, 0), st.integers(0, 2**31)),
    st.just(float("nan")),
    st.dictionaries(st.integers(-5, 5), st.integers(), max_size=2),
)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_server_survives_packets_of_any_shape(serializer: Any, data: Any) -> None:
    values = json_values if serializer is JSON else st.one_of(json_values, msgpack_only)
    packets = data.draw(
        st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"pattern": values},
                    optional={"data": values, "id": values, "metadata": values},
                ),
                packet_like,
                values,
            ),
            min_size=1,
            max_size=6,
        )
    )

    async def main() -> None:
        name = f"fuzz-{serializer.name}"
        app = Microservice(f"memory://{name}", serializer=serializer)

        @app.message_pattern("echo")
        def echo(value: Any, ctx: Context) -> Any:
            return value

        @app.event_pattern("seen")
        def seen(value: Any) -> None:
            pass

        await app.listen()
        transport = app.transport
        assert isinstance(transport, MemoryServerTransport)
        failures = _Failures()
        logging.getLogger("polybus.server").addHandler(failures)
        client = create_client(f"memory://{name}", serializer=serializer, timeout=2)
        try:
            await client.connect()
            for packet in packets:
                try:
                    body = serializer.dumps(packet)
                except ProtocolError:
                    continue
                with contextlib.suppress(ProtocolError):
                    await transport._deliver(body, client.transport)  # type: ignore[arg-type]
            await asyncio.sleep(0)
            await app.drain(2)
            assert await client.send("echo", "still serving") == "still serving"
            assert failures.records == []
        finally:
            logging.getLogger("polybus.server").removeHandler(failures)
            await client.close()
            await app.close(grace=1)

    asyncio.run(main())
