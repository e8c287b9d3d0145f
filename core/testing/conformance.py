"""The conformance suite: one list of cases every transport must pass.

Run it against any URL with ``polybus conformance URL``, or from your own tests::

    # test_my_broker.py
    import pytest
    from polybus.testing.conformance import *  # noqa: F403

    @pytest.fixture
    def polybus_url() -> str:
        return "nats://127.0.0.1:4222"

Each case asks the transport's :class:`~polybus.Features` whether it applies; a case that
does not apply is skipped with the reason, never silently passed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ..abc import ConnectionStatus
from ..client import ClientProxy
from ..errors import NoRespondersError, RequestTimeout, RpcError, TransportError
from ..middleware import ClientMiddleware, Outgoing, SendNext
from .harness import NOT_APPLICABLE, Conformance

__all__ = [name for name in dir() if name.startswith("test_")]


def _skip_unless(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(f"{NOT_APPLICABLE}{reason}")


def _declared(c: Conformance, case: str) -> None:
    reason = c.features.notes.get(case)
    if reason:
        pytest.skip(f"{NOT_APPLICABLE}declared for {c.features.name}: {reason}")


# -- request-reply ------------------------------------------------------------------------


def test_request_reply_string_pattern(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        assert await client.send(c.routes.echo, {"hello": "world"}) == {"hello": "world"}
        assert await client.send(c.routes.echo, "text") == "text"

    conformance.run(case)


def test_request_reply_object_pattern(conformance: Conformance) -> None:
    _skip_unless(conformance.features.object_patterns, "transport takes string patterns only")

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        assert await c.client().send(c.routes.sum, [1, 2, 3, 4]) == 10

    conformance.run(case)


def test_object_key_order_does_not_matter(conformance: Conformance) -> None:
    _skip_unless(conformance.features.object_patterns, "transport takes string patterns only")

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        assert await c.client().send(c.routes.sum_reordered, [5, 5]) == 10

    conformance.run(case)


def test_typed_payload_validation_error_is_an_error_reply(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        ok = await client.send(c.routes.charge, {"order_id": "ord_42", "amount": 1999})
        assert ok == {"id": "inv_ord_42", "amount": 1999, "status": "paid"}
        with pytest.raises(RpcError) as info:
            await client.send(c.routes.charge, {"order_id": "ord_42", "amount": "lots"})
        assert info.value.error["message"] == "Validation failed"

    conformance.run(case)


# -- events -------------------------------------------------------------------------------


def test_emit_delivers_to_every_event_handler(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        token = uuid.uuid4().hex
        await client.emit(c.routes.event, {"token": token, "n": 1})
        got = await c.eventually(lambda: client.send(c.routes.events, token), lambda v: len(v) >= 2)
        assert sorted(handler for handler, _, _ in got) == ["first", "second"]
        assert all(data == {"token": token, "n": 1} for _, _, data in got)

    conformance.run(case)


def test_unawaited_send_sends_nothing(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        token = uuid.uuid4().hex
        call = client.send(c.routes.count, token)
        await asyncio.sleep(0.3)
        assert await client.send(c.routes.count, token) == 1  # only this one arrived
        assert await call == 2

    conformance.run(case)


# -- concurrency --------------------------------------------------------------------------


def test_1000_concurrent_sends_from_two_clients(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        clients = [c.client(), c.client()]

        async def one(client: ClientProxy, i: int) -> tuple[int, Any]:
            return i, await client.send(c.routes.echo, {"i": i, "client": id(client)}, timeout=60)

        results = await asyncio.gather(*(one(clients[i % 2], i) for i in range(1000)))
        for i, reply in results:
            assert reply == {"i": i, "client": id(clients[i % 2])}
        assert all(client.pending_count == 0 for client in clients)

    conformance.run(case)


# -- errors -------------------------------------------------------------------------------


def test_unknown_pattern_outcome(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        outcome = c.features.unknown_pattern
        if outcome == "error":
            with pytest.raises(RpcError) as info:
                await client.send(c.routes.unknown, {})
            assert info.value.no_handler
        elif outcome == "no_responders":
            with pytest.raises(NoRespondersError):
                await client.send(c.routes.unknown, {}, timeout=5)
        else:
            with pytest.raises(RequestTimeout):
                await client.send(c.routes.unknown, {}, timeout=0.5)
        assert client.pending_count == 0
        assert await client.send(c.routes.echo, 1) == 1

    conformance.run(case)


def test_errors_cross_as_nestjs_shapes_and_server_keeps_serving(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        with pytest.raises(RpcError) as info:
            await client.send(c.routes.fail_object, {})
        assert info.value.error == {"code": "E_TEST", "message": "boom"}
        with pytest.raises(RpcError) as info:
            await client.send(c.routes.fail_string, {})
        assert info.value.error == {"status": "error", "message": "boom"}
        with pytest.raises(RpcError) as info:
            await client.send(c.routes.crash, {})
        assert info.value.error == {"status": "error", "message": "Internal server error"}
        assert await client.send(c.routes.echo, "still serving") == "still serving"

    conformance.run(case)


# -- streams ------------------------------------------------------------------------------


def test_streamed_reply_arrives_in_order_and_completes(conformance: Conformance) -> None:
    _skip_unless(conformance.features.streaming, "transport has no streamed replies")

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        assert [item async for item in client.send(c.routes.stream, 50)] == list(range(1, 51))
        assert await client.send(c.routes.stream, 3) == 3  # awaiting gives the last value
        assert [item async for item in client.send(c.routes.stream, 0)] == []
        assert client.pending_count == 0

    conformance.run(case)


# -- timeouts and lifecycle ---------------------------------------------------------------


def test_timeout_raises_and_late_reply_is_dropped(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        with pytest.raises(RequestTimeout):
            await client.send(c.routes.slow, 0.5, timeout=0.1)
        assert client.pending_count == 0
        await asyncio.sleep(0.8)  # the late reply arrives now and must be dropped quietly
        assert client.pending_count == 0
        assert await client.send(c.routes.echo, "next") == "next"

    conformance.run(case)


def test_payload_fidelity(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        nested: Any = {"leaf": [1, 2.5, True, None, "x"]}
        for depth in range(30):
            nested = {"level": depth, "child": nested, "list": [nested] if depth < 3 else []}
        samples = [
            {"text": "héllo – ✓ 😀 𝄞 日本語 עברית", "emoji": "👩‍👩‍👧‍👦", "nul": "a\u0000b"},
            nested,
            {"ints": [0, -1, 2**53 - 1], "float": 0.1 + 0.2, "empty": {}, "list": []},
            "plain string",
            [1, "two", {"three": 3}],
        ]
        for sample in samples:
            assert await client.send(c.routes.echo, sample, timeout=60) == sample

    conformance.run(case)


def test_payload_of_1_mib(conformance: Conformance) -> None:
    _declared(conformance, "payload_1mib")

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        sample = {"big": "é😀" * (1024 * 1024 // 6)}  # 1 MiB of UTF-8, astral included
        assert await c.client().send(c.routes.echo, sample, timeout=60) == sample

    conformance.run(case)


def test_connect_is_lazy_and_idempotent(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        assert client.status is ConnectionStatus.DISCONNECTED
        await asyncio.sleep(0.05)
        assert client.status is ConnectionStatus.DISCONNECTED  # building one connects nothing
        await asyncio.gather(client.connect(), client.connect(), client.connect())
        await client.connect()
        assert str(client.status.value) == "connected"
        assert await client.send(c.routes.echo, 1) == 1

        lazy = c.client()
        assert await lazy.send(c.routes.echo, 2) == 2  # first use connects
        assert lazy.status.value == "connected"

    conformance.run(case)


def test_close_fails_pending_requests(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        await client.connect()
        pending = asyncio.ensure_future(client.send(c.routes.slow, 2.0, timeout=30))
        await asyncio.sleep(0.3)
        await client.close()
        with pytest.raises(TransportError):
            await asyncio.wait_for(pending, 5)
        assert client.pending_count == 0

    conformance.run(case)


def test_serializer_is_pluggable(conformance: Conformance) -> None:
    _skip_unless(not conformance.features.text_only, "transport frames carry JSON text only")
    _declared(conformance, "serializer_is_pluggable")

    async def case(c: Conformance) -> None:
        await c.server(serializer="msgpack")
        client = c.client(serializer="msgpack")
        payload = {"bytes": b"\x00\x01", "text": "é😀"}
        assert await client.send(c.routes.echo, payload) == payload

    conformance.run(case)


# -- features opened by the transport -----------------------------------------------------


def test_two_server_instances(conformance: Conformance) -> None:
    f = conformance.features
    _skip_unless(f.competing_consumers or f.broadcast, "one server per endpoint")

    async def case(c: Conformance) -> None:
        await c.server("a")
        await c.server("b")
        clients = [c.client(), c.client()]
        token = uuid.uuid4().hex
        n = 60

        async def one(i: int) -> None:
            client = clients[i % 2]
            assert await client.send(c.routes.whoami, token) in ("a", "b")
            payload = {"i": i, "caller": i % 2}
            assert await client.send(c.routes.echo, payload) == payload  # its own reply

        await asyncio.gather(*(one(i) for i in range(n)))
        key = f"whoami:{token}"
        expected = 2 * n if f.broadcast else n
        probe = clients[0]
        await c.eventually(lambda: probe.send(c.routes.events, key), lambda v: len(v) >= expected)
        await asyncio.sleep(0.3)
        handled = await probe.send(c.routes.events, key)
        if f.broadcast:
            assert handled.count("a") == n and handled.count("b") == n  # every instance
        else:
            assert len(handled) == n  # each request answered exactly once
        assert all(client.pending_count == 0 for client in clients)

    conformance.run(case)


def test_server_joining_and_leaving_mid_traffic_loses_no_request(conformance: Conformance) -> None:
    f = conformance.features
    _skip_unless(f.competing_consumers, "no competing consumers to join or leave")

    async def case(c: Conformance) -> None:
        await c.server("a", **f.durable_options)
        client = c.client(timeout=60)
        sent = 0
        results: list[Any] = []
        stop = asyncio.Event()

        async def traffic(worker: int) -> None:
            nonlocal sent
            i = worker
            while not stop.is_set():
                sent += 1
                results.append(await client.send(c.routes.echo, i))
                i += 8
                await asyncio.sleep(0.01)

        workers = [asyncio.ensure_future(traffic(w)) for w in range(8)]
        await asyncio.sleep(1.0)
        joined = await c.server("b", **f.durable_options)  # joins while requests flow
        await asyncio.sleep(1.0)
        await joined.close(grace=2.0)  # and leaves while they still flow
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)  # none failed or timed out
        assert len(results) == sent and sent > 0

    conformance.run(case)


def test_event_is_settled_only_after_its_handler_finished(conformance: Conformance) -> None:
    f = conformance.features
    _skip_unless(f.durable_events, "transport does not keep events")

    async def case(c: Conformance) -> None:
        first = await c.server("a", **f.durable_options)
        client = c.client()
        token = uuid.uuid4().hex
        await client.emit(c.routes.slow_event, {"token": token, "seconds": 1.0})
        await c.eventually(lambda: client.send(c.routes.events, token), lambda v: len(v) >= 1)
        await first.close(grace=0)  # the handler is cut off before it finishes
        await c.server("b", **f.durable_options)
        got = await c.eventually(
            lambda: client.send(c.routes.events, token),
            lambda v: ["finished", "b"] in [item[:2] for item in v],
            timeout=60,
        )
        assert ["finished", "b"] in [item[:2] for item in got], got
        assert ["finished", "a"] not in [item[:2] for item in got]

    conformance.run(case)


def test_queue_group_load_balances(conformance: Conformance) -> None:
    _skip_unless(conformance.features.queue_groups, "transport has no queue groups")

    async def case(c: Conformance) -> None:
        group = f"q{c.token}"
        await c.server("a", queue=group)
        await c.server("b", queue=group)
        client = c.client()
        token = uuid.uuid4().hex
        n = 40
        await asyncio.gather(*(client.send(c.routes.whoami, token) for _ in range(n)))
        await asyncio.sleep(0.3)
        assert len(await client.send(c.routes.events, f"whoami:{token}")) == n

    conformance.run(case)


def test_events_published_while_no_server_runs_are_delivered_later(
    conformance: Conformance,
) -> None:
    _skip_unless(conformance.features.durable_events, "transport does not keep events")
    _declared(conformance, "durable_events")

    async def case(c: Conformance) -> None:
        first = await c.server("a", **c.features.durable_options)
        await first.close()
        client = c.client()
        token = uuid.uuid4().hex
        for n in range(5):
            await client.emit(c.routes.event, {"token": token, "n": n})
        await c.server("b", **c.features.durable_options)
        got = await c.eventually(
            lambda: client.send(c.routes.events, token), lambda v: len(v) >= 10, timeout=30
        )
        assert sorted(data["n"] for handler, _, data in got if handler == "first") == list(range(5))

    conformance.run(case)


def test_headers_round_trip(conformance: Conformance) -> None:
    _skip_unless(conformance.features.headers, "transport has no message headers")

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        reply = await client.send(
            c.routes.headers, {}, headers={"x-test-one": "1", "x-test-two": "é"}
        )
        assert reply == {"x-test-one": "1", "x-test-two": "é"}

    conformance.run(case)


# -- middleware ---------------------------------------------------------------------------


class _Stamp(ClientMiddleware):
    """Puts one header on every call, as a tenant or auth middleware would."""

    def __init__(self, value: str) -> None:
        self.value = value

    async def send(self, message: Outgoing, call_next: SendNext) -> Any:
        message.headers["x-test-stamp"] = self.value
        return await call_next(message)


def test_middleware_rejects_a_call_before_its_handler(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        with pytest.raises(RpcError) as info:
            await client.send(c.routes.guarded, {"token": c.token, "ticket": "wrong"})
        assert info.value.error == {"status": "error", "message": "Forbidden"}
        assert await client.send(c.routes.guarded, {"token": c.token, "ticket": "open"}) == "let in"
        assert await client.send(c.routes.count, f"guarded:{c.token}") == 2  # 1 let in, +1

    conformance.run(case)


def test_client_middleware_adds_a_header_the_handler_sees(conformance: Conformance) -> None:
    _skip_unless(conformance.features.headers, "transport has no message headers")

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client(middleware=[_Stamp(c.token)])
        reply = await client.send(c.routes.headers, {}, headers={"x-test-own": "1"})
        assert reply == {"x-test-own": "1", "x-test-stamp": c.token}

    conformance.run(case)


def test_middleware_maps_a_handler_exception(conformance: Conformance) -> None:
    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client()
        with pytest.raises(RpcError) as info:
            await client.send(c.routes.mapped, "order-7")
        assert info.value.error == {"status": "error", "message": "not found: 'order-7'"}
        assert await client.send(c.routes.echo, "still serving") == "still serving"

    conformance.run(case)


__all__ = [name for name in dir() if name.startswith("test_")]
