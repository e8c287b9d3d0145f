"""Configuration: URLs, NestJS-style dicts, environment, registry, client_property."""

from __future__ import annotations

import sys
import traceback
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from polybus import (
    ClientProxy,
    ClientRegistry,
    ConfigError,
    Microservice,
    client_property,
    create_client,
    redact_url,
)
from polybus.config import (
    create_client_transport,
    create_server_transport,
    features_of,
    resolve_target,
)
from polybus.serializers import JsonSerializer, MsgpackSerializer, resolve_serializer
from polybus.transports.kafka import KafkaOptions
from polybus.transports.nats import NatsOptions
from polybus.transports.redis import RedisOptions
from polybus.transports.tcp import PLUGIN as TCP_PLUGIN
from polybus.transports.tcp import TcpOptions


def test_tcp_url_and_overrides() -> None:
    plugin, options = resolve_target("tcp://127.0.0.1:4000?max_message_bytes=1024", {})
    assert plugin is TCP_PLUGIN
    assert isinstance(options, TcpOptions)
    assert (options.host, options.port, options.max_message_bytes, options.tls) == (
        "127.0.0.1",
        4000,
        1024,
        False,
    )
    _, options = resolve_target("tcps://h:1", {"connectTimeout": 2.5})
    assert isinstance(options, TcpOptions)
    assert options.tls and options.connect_timeout == 2.5


def test_nest_style_dict() -> None:
    plugin, options = resolve_target(
        {"name": "MATH", "transport": "TCP", "options": {"host": "127.0.0.1", "port": 3001}}, {}
    )
    assert plugin is TCP_PLUGIN and isinstance(options, TcpOptions) and options.port == 3001
    plugin, _ = resolve_target({"transport": 0, "options": {}}, {})  # Transport.TCP == 0
    assert plugin is TCP_PLUGIN


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("gopher://x:1", "unknown transport scheme 'gopher'; known schemes: amqp"),
        ("not a url", "is not a URL"),
        ("tcp://h:99999", "invalid URL"),
        ({"transport": "CARRIER_PIGEON"}, "unknown transport"),
        ({"transport": "TCP", "bogus": 1}, "unknown config keys: bogus"),
        ({"transport": "TCP", "options": {"colour": "red"}}, "unknown option 'colour'"),
        (42, "cannot configure a transport from int"),
    ],
)
def test_bad_config_raises_config_error_naming_the_problem(target: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_target(target, {})


def test_environment_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYBUS_URL", "memory://from-env")
    assert "memory" in repr(create_client().transport)
    monkeypatch.delenv("POLYBUS_URL")
    with pytest.raises(ConfigError, match="POLYBUS_URL"):
        create_client()


def test_serializer_choice() -> None:
    assert isinstance(resolve_serializer(None), JsonSerializer)
    assert isinstance(resolve_serializer("msgpack"), MsgpackSerializer)
    with pytest.raises(ConfigError, match="known: json, msgpack"):
        resolve_serializer("pickle")
    with pytest.raises(ConfigError, match="binary"):
        create_client("tcp://127.0.0.1:1", serializer="msgpack")


def test_redact_url_hides_passwords() -> None:
    assert redact_url("amqp://guest:s3cr3t@host:5672/") == "amqp://guest:***@host:5672/"
    assert redact_url("redis://host:6379") == "redis://host:6379"
    with pytest.raises(ConfigError) as info:
        resolve_target("tcp://user:s3cr3t@h:99999", {})
    assert "s3cr3t" not in str(info.value)


def test_redact_url_finds_the_whole_password() -> None:
    assert redact_url("redis://u:a/b?c#d@e@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("nats://t/o?k#en@h:4222") == "nats://***@h:4222"
    assert (
        redact_url("kafka://h:1?username=u&password=p/q") == "kafka://h:1?username=u&password=***"
    )
    assert redact_url("redis://h:6379/0?client_name=x") == "redis://h:6379/0?client_name=x"


def test_an_unencoded_password_reaches_the_transport_whole() -> None:
    password = "a/b?c#d@e:f é"
    _, redis = resolve_target(f"redis://alice:{password}@127.0.0.1:6380/2", {})
    assert isinstance(redis, RedisOptions)
    assert (redis.username, redis.password, redis.host, redis.port, redis.db) == (
        ("alice", password, "127.0.0.1", 6380, 2)
    )
    _, nats = resolve_target(f"nats://alice:{password}@127.0.0.1:4223", {})
    assert isinstance(nats, NatsOptions)
    assert (nats.user, nats.password, nats.servers) == (
        "alice",
        password,
        ["nats://127.0.0.1:4223"],
    )
    _, kafka = resolve_target(f"kafka://alice:{password}@127.0.0.1:19093", {})
    assert isinstance(kafka, KafkaOptions)
    assert (kafka.sasl_plain_password, kafka.brokers) == (password, ["127.0.0.1:19093"])


SCHEMES_WITH_CREDENTIALS = ("redis", "rediss", "amqp", "amqps", "nats", "tls", "kafka")
_markers = st.integers(0, 16**8 - 1).map(lambda n: f"pw{n:08x}")
_noise = st.one_of(st.text(max_size=6), st.text(alphabet="/?#@:%&=[] \\'\"+;", max_size=4))


@st.composite
def _passwords(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A password of arbitrary text around two markers; a leak of any part shows a marker."""
    markers = [draw(_markers), draw(_markers)]
    text = draw(_noise) + markers[0] + draw(_noise) + markers[1] + draw(_noise)
    return text, markers


def _shown(exc: BaseException) -> str:
    return "\n".join(
        [*traceback.format_exception(type(exc), exc, exc.__traceback__), repr(exc), repr(exc.args)]
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(SCHEMES_WITH_CREDENTIALS),
    secret=_passwords(),
    encoded=st.booleans(),
    token=st.booleans(),
    tail=st.sampled_from(["", "/", "/0", "?connect_timeout=1", "/?queue=q#frag"]),
)
def test_no_password_text_is_ever_shown(
    scheme: str, secret: tuple[str, list[str]], encoded: bool, token: bool, tail: str
) -> None:
    """Whatever a URL's password holds, written raw or percent-encoded, no part of it shows
    in redact_url (the CLI's serving line), a ConfigError or a transport's repr."""
    password, markers = secret
    assume(encoded or not token or ":" not in password)  # a raw token has no ':' (user:pass)
    written = quote(password, safe="") if encoded else password
    userinfo = written if token else f"alice:{written}"
    url = f"{scheme}://{userinfo}@127.0.0.1:1{tail}"
    shown = [redact_url(url)]
    targets: list[Any] = [url]
    if scheme.startswith("amqp"):  # NestJS's RMQ options carry URLs too
        targets.append({"transport": "RMQ", "options": {"urls": [url], "queue": "q"}})
    for target in targets:
        for create in (create_client_transport, create_server_transport):
            try:
                shown.append(repr(create(target)))
            except ConfigError as exc:
                shown.append(_shown(exc))
    for text in shown:
        for marker in markers:
            assert marker not in text, f"part of the password shows: {text[:400]}"


def test_features_are_declared_per_transport() -> None:
    assert features_of("tcp://h:1").unknown_pattern == "error"
    assert features_of("memory://x").competing_consumers


def test_import_polybus_imports_no_broker_client() -> None:
    import subprocess

    code = (
        "import sys, polybus, polybus.transports.tcp, polybus.transports.memory;"
        "mods = ('redis', 'nats', 'aio_pika', 'aiormq', 'aiokafka');"
        "bad = [m for m in mods if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


async def test_registry_register_env_override_and_lifecycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = uuid.uuid4().hex
    app = Microservice(f"memory://{name}")

    @app.message_pattern("ping")
    def ping(_: Any) -> str:
        return "pong"

    registry = ClientRegistry()
    registry.register_many([{"name": "BILLING", "transport": "TCP", "options": {"port": 1}}])

    async def factory() -> ClientProxy:
        return create_client(f"memory://{name}")

    registry.register_async("ASYNC", factory)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("BILLING", "memory://x")
    with pytest.raises(ConfigError, match="async factory"):
        registry.get("ASYNC")
    with pytest.raises(ConfigError, match="no client named 'NOPE'"):
        registry.get("NOPE")
    monkeypatch.setenv("POLYBUS_BILLING_URL", f"memory://{name}")
    async with app, registry:
        assert await registry.get("BILLING").send("ping") == "pong"
        assert await registry["ASYNC"].send("ping") == "pong"
        fake = create_client(f"memory://{name}")
        with registry.override("BILLING", fake) as client:
            assert registry.get("BILLING") is client
        assert registry.get("BILLING") is not fake
        await fake.close()


async def test_client_property_builds_lazily_per_instance() -> None:
    name = uuid.uuid4().hex

    class Orders:
        billing = client_property(f"memory://{name}")

    assert isinstance(Orders.billing, client_property)
    a, b = Orders(), Orders()
    assert a.billing is a.billing
    assert a.billing is not b.billing
    app = Microservice(f"memory://{name}")

    @app.message_pattern({"cmd": "charge"})
    def charge(data: Any) -> Any:
        return {"status": "paid", **data}

    async with app:
        assert (await a.billing.send({"cmd": "charge"}, {"amount": 1}))["status"] == "paid"
    await a.billing.close()
