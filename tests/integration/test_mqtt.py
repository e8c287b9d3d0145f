"""MQTT transport against Mosquitto ($POLYBUS_MQTT_URL, default mqtt://127.0.0.1:1883):
the NestJS wire format seen from a raw aiomqtt peer, ``+``/``#`` handler routes, per-route
and per-record QoS, MQTT 5 user properties as headers, malformed input; TLS with client
certificates on a private Mosquitto (port 11883)."""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
import pytest
import trustme

from polybus import Microservice, create_client
from polybus.errors import TransportError
from polybus.packets import DEADLINE_HEADER
from polybus.testing.brokers import broker_url, require
from polybus.transports.mqtt import MqttContext, MqttRecord

pytestmark = pytest.mark.broker("mqtt")


@pytest.fixture
def url() -> str:
    return broker_url("mqtt")


@pytest.fixture
def prefix() -> str:
    return f"polybus-test/{uuid.uuid4().hex[:8]}"


def raw_peer(url: str) -> aiomqtt.Client:
    parts = urlsplit(url)
    return aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883)


async def next_message(peer: aiomqtt.Client, timeout: float = 10.0) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(peer.messages)), timeout)


async def test_wire_format_seen_by_a_raw_peer(url: str, prefix: str) -> None:
    """Request on the route, JSON envelope with id (deadline in v12 metadata), reply on
    ``<topic>/reply`` with ``isDisposed``, QoS 0 unless a record asks for more."""
    route = f"{prefix}/sum"
    async with raw_peer(url) as peer, create_client(url, timeout=10) as client:
        await peer.subscribe(route, qos=2)
        call = asyncio.ensure_future(client.send(route, MqttRecord([1, 2], qos=1)))
        request = await next_message(peer)
        assert request.topic.value == route and request.qos == 1 and not request.retain
        packet = orjson.loads(request.payload)  # type: ignore[arg-type]
        assert packet["pattern"] == route and packet["data"] == [1, 2]
        assert DEADLINE_HEADER in packet["metadata"]
        reply = {"response": 3, "isDisposed": True, "id": packet["id"]}
        await peer.publish(f"{route}/reply", orjson.dumps(reply))
        assert await call == 3

        await client.emit(route, {"n": 1})
        event = await next_message(peer)
        assert event.qos == 0
        assert orjson.loads(event.payload) == {"pattern": route, "data": {"n": 1}}  # type: ignore[arg-type]


async def test_wildcard_routes_and_per_route_qos(url: str, prefix: str) -> None:
    app = Microservice(url)

    @app.message_pattern(f"{prefix}/sensor/+/read", qos=1)
    def read(data: Any, ctx: MqttContext) -> list[Any]:
        return [ctx.topic, ctx.message.qos, data]

    @app.message_pattern(f"{prefix}/logs/#")
    def logs(_: Any, ctx: MqttContext) -> str:
        return ctx.topic

    async with app, create_client(url, timeout=10) as client:
        topic = f"{prefix}/sensor/7/read"
        assert await client.send(topic, "x") == [topic, 0, "x"]  # QoS 0 publish: min(0, 1)
        assert await client.send(topic, MqttRecord("y", qos=2)) == [topic, 1, "y"]
        deep = f"{prefix}/logs/a/b"
        assert await client.send(deep, None) == deep


async def test_mqtt5_user_properties_are_headers(url: str, prefix: str) -> None:
    app = Microservice(f"{url}?protocol_version=5")
    route = f"{prefix}/headers"

    @app.message_pattern(route)
    def headers(_: Any, ctx: MqttContext) -> dict[str, Any]:
        assert ctx.deadline is not None
        return {k: v for k, v in (ctx.headers or {}).items() if k != DEADLINE_HEADER}

    client = create_client(f"{url}?protocol_version=5", user_properties={"svc": "billing"})
    async with app, client:
        got = await client.send(route, {}, headers={"x-trace": "t1"})
    assert got == {"svc": "billing", "x-trace": "t1"}


async def test_malformed_input_is_dropped_and_the_server_keeps_serving(
    url: str, prefix: str
) -> None:
    app = Microservice(url)
    route = f"{prefix}/echo"

    @app.message_pattern(route)
    def echo(data: Any) -> Any:
        return data

    async with app, raw_peer(url) as peer, create_client(url, timeout=10) as client:
        await peer.publish(route, b"\xff not json")
        await peer.publish(route, b"")
        assert await client.send(route, {"ok": True}) == {"ok": True}


async def test_a_qos1_event_is_acknowledged_only_after_its_handler(url: str, prefix: str) -> None:
    """A server with a persistent session is closed while its handler runs: the broker
    delivers the event again to the next server of that session, which finishes it."""
    route = f"{prefix}/slow"
    client_id = f"polybus-test-{uuid.uuid4().hex[:12]}"
    durable = f"{url}?client_id={client_id}&clean_session=false&qos=1"
    started = asyncio.Event()
    finished: list[str] = []

    def service(name: str, seconds: float) -> Microservice:
        app = Microservice(durable)

        @app.event_pattern(route)
        async def slow(_: Any) -> None:
            started.set()
            await asyncio.sleep(seconds)
            finished.append(name)

        return app

    first = service("a", 30)
    await first.listen()
    try:
        async with create_client(f"{url}?qos=1") as client:
            await client.emit(route, {"n": 1})
        await asyncio.wait_for(started.wait(), 10)
    finally:
        await first.close(grace=0)  # the handler is cut off before it finishes
    try:
        async with service("b", 0):
            for _ in range(200):
                if finished:
                    break
                await asyncio.sleep(0.05)
    finally:
        parts = urlsplit(url)  # drop the persistent session from the shared broker
        async with aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or 1883,
            identifier=client_id,
            clean_session=True,
        ):
            pass
    assert finished == ["b"]


# -- TLS, on a private Mosquitto (127.0.0.1:11883, this suite's own port) ------------------

TLS_PORT = 11883


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Path]:
    """A throwaway Mosquitto with a TLS listener requiring client certificates; yields
    the directory holding ``ca.pem``, ``client.crt`` and ``client.key``."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        require("mosquitto is not installed: the TLS test runs a private one")
    if broker_answers(TLS_PORT):
        require(f"127.0.0.1:{TLS_PORT} is taken: the TLS test needs it")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ca.issue_cert("127.0.0.1")
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    client = ca.issue_cert("client@polybus.test")
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    (tmp_path / "mosquitto.conf").write_text(
        f"user {getpass.getuser()}\n"
        f"listener {TLS_PORT} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {tmp_path}/ca.pem\ncertfile {tmp_path}/server.crt\n"
        f"keyfile {tmp_path}/server.key\nrequire_certificate true\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not broker_answers(TLS_PORT):
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield tmp_path
    finally:
        proc.terminate()
        proc.wait(10)


def broker_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


async def test_mqtts_with_client_certificates(tls_broker: Path) -> None:
    base = f"mqtts://127.0.0.1:{TLS_PORT}?ca={tls_broker}/ca.pem"
    url = f"{base}&cert={tls_broker}/client.crt&key={tls_broker}/client.key"
    app = Microservice(url)

    @app.message_pattern("tls/echo")
    def echo(data: Any) -> Any:
        return data

    async with app, create_client(url, timeout=10) as client:
        assert await client.send("tls/echo", {"secure": True}) == {"secure": True}
    # TLS 1.3: the broker refuses the missing certificate after the handshake, so the
    # client learns it when no CONNACK comes: a short connect_timeout bounds the wait
    without_cert = create_client(f"{base}&connect_timeout=2", timeout=5)
    with pytest.raises(TransportError):
        await without_cert.send("tls/echo", 1)
    await without_cert.close()
