"""Security (issue 6, property 4): TLS for TCP, secrets kept out of logs, reprs and errors,
no unsafe deserializer, and a maximum message size on every transport."""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme

from polybus import Microservice, create_client
from polybus.errors import (
    ConfigError,
    PolybusError,
    ProtocolError,
    RequestTimeout,
    TransportError,
)
from polybus.serializers import resolve_serializer
from polybus.testing.app import COUNTS, RECEIVED
from polybus.testing.brokers import broker_url, require
from polybus.testing.harness import Conformance
from polybus.transports.tcp import TcpServerTransport

SECRET = "s3cr3t"

# -- TLS ----------------------------------------------------------------------------------


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_pem = tmp / "server.pem"  # key and certificate chain in one file
        server.private_key_and_cert_chain_pem.write_to_path(str(self.server_pem))
        client = self.ca.issue_cert("client@polybus.test")
        self.client_cert = tmp / "client.crt"
        self.client_key = tmp / "client.key"
        for blob in client.cert_chain_pems:
            blob.write_to_path(str(self.client_cert), append=True)
        client.private_key_pem.write_to_path(str(self.client_key))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _tls_service(url: str, **options: Any) -> Microservice:
    app = Microservice(url, **options)

    @app.message_pattern("echo")
    def echo(data: Any) -> Any:
        return data

    return app


def _port(app: Microservice) -> int:
    transport = app.transport
    assert isinstance(transport, TcpServerTransport)
    return transport.port


async def test_request_over_tls(pki: Pki) -> None:
    app = _tls_service(f"tcps://127.0.0.1:0?cert={pki.server_pem}")
    await app.listen()
    port = _port(app)
    try:
        async with create_client(f"tcps://127.0.0.1:{port}?ca={pki.ca_file}") as client:
            assert await client.send("echo", {"over": "tls"}) == {"over": "tls"}
        # NestJS-style options work too
        nest = {"transport": "TCP", "options": {"host": "127.0.0.1", "port": port}}
        nest["options"]["tlsOptions"] = {"ca": str(pki.ca_file)}  # type: ignore[index]
        async with create_client(nest) as client:
            assert await client.send("echo", 1) == 1
    finally:
        await app.close()


async def test_client_without_the_ca_fails_with_transport_error(pki: Pki) -> None:
    app = _tls_service(f"tcps://127.0.0.1:0?cert={pki.server_pem}")
    await app.listen()
    port = _port(app)
    try:
        client = create_client(f"tcps://127.0.0.1:{port}", timeout=5)  # system CAs only
        with pytest.raises(TransportError) as info:
            await client.send("echo", 1)
        assert isinstance(info.value.__cause__, ssl.SSLError)
        await client.close()

        plain = create_client(f"tcp://127.0.0.1:{port}", timeout=5)  # no TLS at all
        with pytest.raises((TransportError, PolybusError)):
            await plain.send("echo", 1)
        await plain.close()

        async with create_client(f"tcps://127.0.0.1:{port}?ca={pki.ca_file}") as good:
            assert await good.send("echo", "server still fine") == "server still fine"
    finally:
        await app.close()


async def test_mutual_tls_requires_a_client_certificate(pki: Pki) -> None:
    app = _tls_service(f"tcps://127.0.0.1:0?cert={pki.server_pem}&ca={pki.ca_file}")
    await app.listen()
    port = _port(app)
    base = f"tcps://127.0.0.1:{port}?ca={pki.ca_file}"
    try:
        anonymous = create_client(base, timeout=3)
        with pytest.raises(PolybusError):  # refused in the handshake or on first read
            await anonymous.send("echo", 1)
        await anonymous.close()
        async with create_client(f"{base}&cert={pki.client_cert}&key={pki.client_key}") as client:
            assert await client.send("echo", "mtls") == "mtls"
    finally:
        await app.close()


# -- credentials never leak ---------------------------------------------------------------

SECRET_URLS = {
    "redis": f"redis://user:{SECRET}@127.0.0.1:1/",
    "redis-password-only": f"redis://:{SECRET}@127.0.0.1:1/0",
    "rabbitmq": f"amqp://guest:{SECRET}@127.0.0.1:1/?queue=polybus-secret&connect_timeout=2",
    "nats": f"nats://u:{SECRET}@127.0.0.1:1",
    "nats-token": f"nats://{SECRET}@127.0.0.1:1",
    "kafka": f"kafka://u:{SECRET}@127.0.0.1:1",
    "kafka-option": f"kafka://127.0.0.1:1?username=u&password={SECRET}",
    "mqtt": f"mqtt://u:{SECRET}@127.0.0.1:1",
}
ADAPTERS = {
    "redis": "redis",
    "rabbitmq": "rabbitmq",
    "nats": "nats",
    "kafka": "kafka",
    "mqtt": "mqtt",
}


def _adapter(name: str) -> None:
    module = ADAPTERS[name.split("-")[0]]
    try:
        importlib.import_module(f"polybus.transports.{module}")
    except ImportError as exc:
        require(f"the {module} adapter is not importable yet: {exc}")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _assert_clean(what: str, text: str) -> None:
    assert SECRET not in text, f"the password leaked in {what}: {text[:300]}"


def _check_records(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        _assert_clean(f"log record of {record.name}", record.getMessage())
        if record.exc_info:
            formatter = logging.Formatter()
            _assert_clean(
                f"traceback logged by {record.name}", formatter.formatException(record.exc_info)
            )


def _check_error(exc: BaseException) -> None:
    for link in _chain(exc):
        _assert_clean(f"str of {type(link).__name__}", str(link))
        _assert_clean(f"repr of {type(link).__name__}", repr(link))
        for arg in link.args:
            _assert_clean(f"args of {type(link).__name__}", repr(arg))


@pytest.mark.parametrize("name", list(SECRET_URLS))
async def test_client_never_shows_the_password(name: str, caplog: pytest.LogCaptureFixture) -> None:
    _adapter(name)
    caplog.set_level(logging.DEBUG)
    client = create_client(SECRET_URLS[name], timeout=3)
    _assert_clean("repr(client)", repr(client))
    _assert_clean("repr(client.transport)", repr(client.transport))
    with pytest.raises(TransportError) as info:
        await asyncio.wait_for(client.send("echo", 1), 20)
    _check_error(info.value)
    _assert_clean("repr(client) after failure", repr(client))
    _assert_clean("repr(client.transport) after failure", repr(client.transport))
    await client.close()
    _check_records(caplog)


@pytest.mark.parametrize("name", list(SECRET_URLS))
async def test_server_never_shows_the_password(name: str, caplog: pytest.LogCaptureFixture) -> None:
    _adapter(name)
    caplog.set_level(logging.DEBUG)
    app = Microservice(SECRET_URLS[name], name="secret")

    @app.message_pattern("echo")
    def echo(data: Any) -> Any:
        return data

    _assert_clean("repr(server transport)", repr(app.transport))
    with pytest.raises(TransportError) as info:
        await asyncio.wait_for(app.listen(), 20)
    _check_error(info.value)
    _assert_clean("repr(server transport) after failure", repr(app.transport))
    _check_records(caplog)


def test_bad_url_errors_do_not_show_the_password() -> None:
    for url in (
        f"tcp://u:{SECRET}@127.0.0.1:notaport",
        f"redis://u:{SECRET}@127.0.0.1:99999/",
        f"nope://u:{SECRET}@host",
    ):
        with pytest.raises(ConfigError) as info:
            create_client(url)
        _check_error(info.value)


# -- no unsafe deserializer ---------------------------------------------------------------


def test_no_pickle_serializer() -> None:
    with pytest.raises(ConfigError):
        resolve_serializer("pickle")
    for name in ("json", "msgpack"):
        serializer = resolve_serializer(name)
        assert "pickle" not in type(serializer).__module__


# -- maximum message size -----------------------------------------------------------------

LIMIT = 1024
TRANSPORTS = {
    "memory": lambda: "memory://size-limit",
    "tcp": lambda: "tcp://127.0.0.1:0",
    "redis": lambda: broker_url("redis"),
    "nats": lambda: broker_url("nats"),
    "rabbitmq": lambda: broker_url("rabbitmq"),
    "kafka": lambda: broker_url("kafka"),
    "mqtt": lambda: broker_url("mqtt"),
}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_oversized_message_is_refused_before_sending(transport: str) -> None:
    url = TRANSPORTS[transport]()
    try:
        conformance = Conformance(url)
    except ConfigError as exc:
        require(f"{transport} adapter unavailable: {exc}")
        raise

    async def case(c: Conformance) -> None:
        await c.ensure_server()
        client = c.client(max_message_bytes=LIMIT)
        await client.connect()
        big = uuid.uuid4().hex + "x" * (2 * LIMIT)
        with pytest.raises(ProtocolError):
            await client.send(c.routes.count, big)
        with pytest.raises(ProtocolError):
            await client.emit(c.routes.event, {"token": big, "n": 0})
        assert client.pending_count == 0
        small = uuid.uuid4().hex
        assert await client.send(c.routes.count, small) == 1  # the client still works
        await client.emit(c.routes.event, {"token": small, "n": 1})
        await c.eventually(lambda: client.send(c.routes.events, small), lambda v: len(v) >= 2)
        await asyncio.sleep(0.3)
        assert COUNTS.get(big, 0) == 0, "the oversized request reached the server"
        assert RECEIVED.get(big, []) == [], "the oversized event reached the server"

    conformance.run(case)


async def test_tcp_server_refuses_an_oversized_frame() -> None:
    app = _tls_service("tcp://127.0.0.1:0", max_message_bytes=LIMIT)
    await app.listen()
    port = _port(app)
    try:
        loop = asyncio.get_running_loop()

        def raw() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"%d#" % (LIMIT + 1))  # refused on the prefix, before any body
                try:
                    return sock.recv(10) == b""
                except ConnectionResetError:
                    return True

        assert await loop.run_in_executor(None, raw)
        async with create_client(f"tcp://127.0.0.1:{port}") as client:
            assert await client.send("echo", "x" * 100) == "x" * 100
    finally:
        await app.close()


async def test_tcp_client_refuses_an_oversized_reply() -> None:
    app = Microservice("tcp://127.0.0.1:0")

    @app.message_pattern("big")
    def big(n: int) -> str:
        return "x" * n

    await app.listen()
    client = create_client(f"tcp://127.0.0.1:{_port(app)}", max_message_bytes=LIMIT, timeout=10)
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="exceeds"):
            await client.send("big", 4 * LIMIT)
        assert time.monotonic() - started < 2
        assert await client.send("big", 10) == "x" * 10  # a fresh connection
    finally:
        await client.close()
        await app.close()


# -- aiokafka's DEBUG log and SASL PLAIN (issue 12, item 8) --------------------------------

SASL_PASSWORD = "p@ss/w?rd#:é%41-s3cr3t"


class SaslBroker:
    """Just enough of a Kafka broker for aiokafka to send its SASL PLAIN credentials:
    ApiVersions, SaslHandshake v1 (PLAIN), then a SaslAuthenticate it refuses."""

    def __init__(self) -> None:
        self.auth_requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from aiokafka.protocol import admin  # type: ignore[import-untyped]

        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                request = await reader.readexactly(size)
                api_key = int.from_bytes(request[0:2], "big")
                version = int.from_bytes(request[2:4], "big")
                if api_key == 18:
                    versions = [(18, 0, 1), (17, 0, 1), (36, 0, 1)]
                    response = (
                        admin.ApiVersionResponse_v1(0, versions, 0)
                        if version
                        else admin.ApiVersionResponse_v0(0, versions)
                    )
                elif api_key == 17:
                    response = admin.SaslHandShakeResponse_v1(0, ["PLAIN"])
                elif api_key == 36:
                    self.auth_requests += 1
                    response = admin.SaslAuthenticateResponse_v1(58, "refused", b"", 0)
                else:
                    break
                body = request[4:8] + response.encode()  # the correlation id, then the body
                writer.write(len(body).to_bytes(4, "big") + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_aiokafka_debug_log_never_shows_the_sasl_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _adapter("kafka")
    broker = SaslBroker()
    await broker.start()
    caplog.set_level(logging.DEBUG)
    url = f"kafka://alice:{quote(SASL_PASSWORD, safe='')}@127.0.0.1:{broker.port}"
    client = create_client(url, timeout=3)
    try:
        with pytest.raises((TransportError, RequestTimeout)):
            await asyncio.wait_for(client.send("echo", 1), 20)
    finally:
        await client.close()
        await broker.close()
    assert broker.auth_requests > 0, "aiokafka never sent its credentials: nothing was tested"
    logged = [r for r in caplog.records if "SaslAuthenticateRequest" in r.getMessage()]
    assert logged, "aiokafka no longer logs its SASL requests: nothing was tested"
    shown = [SASL_PASSWORD, repr(SASL_PASSWORD.encode())[2:-1], quote(SASL_PASSWORD, safe="")]
    for record in caplog.records:
        for form in shown:
            assert form not in record.getMessage(), f"{record.name}: {record.getMessage()}"


def test_cli_serving_line_never_shows_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from polybus.cli import main

    (tmp_path / "secret_app.py").write_text(
        "from polybus import Microservice\n"
        "from polybus.errors import TransportError\n\n\n"
        "class Stopped(Microservice):\n"
        "    async def run(self) -> None:\n"
        "        raise TransportError('not serving in this test')\n\n\n"
        "app = Stopped()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYBUS_URL", "memory://unused")
    for password in ("Zq1/Zq2?Zq3#Zq4@Zq5:Zq6", "Zq1ä-🔑Zq2", "Zq1%25Zq2/Zq3"):  # Zq: a part
        url = f"redis://alice:{password}@127.0.0.1:1/0"
        monkeypatch.delitem(sys.modules, "secret_app", raising=False)
        result = CliRunner().invoke(main, ["run", "secret_app:app", "--url", url])
        assert "serving secret_app:app on redis://alice:***@127.0.0.1:1/0" in result.output
        assert "Zq" not in result.output, result.output
