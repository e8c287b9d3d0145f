"""Where the tests find their brokers.

A broker URL comes from the environment first (``POLYBUS_REDIS_URL``...), else the local
default; if nothing answers there and a Docker engine is available, testcontainers starts
one; otherwise the test is skipped with the reason — except when whoever runs the suite
asks for brokers (``POLYBUS_REQUIRE_BROKERS=1``, as polybus's own CI does): then a broker
test that cannot run fails.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from ..config import redact_url

__all__ = [
    "BROKERS",
    "REQUIRE_BROKERS",
    "broker_url",
    "brokers_required",
    "env_flag",
    "require",
    "restart_command",
]

REQUIRE_BROKERS = "POLYBUS_REQUIRE_BROKERS"
"""Set to 1 to make a broker test that cannot run a failure instead of a skip."""


@dataclass(frozen=True)
class Broker:
    env: str
    default: str
    image: str | None


BROKERS: dict[str, Broker] = {
    "redis": Broker("POLYBUS_REDIS_URL", "redis://127.0.0.1:6379", "redis:7.2.5"),
    "nats": Broker("POLYBUS_NATS_URL", "nats://127.0.0.1:4222", "nats:2.10.22"),
    "rabbitmq": Broker("POLYBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", "rabbitmq:3.13.7"),
    "kafka": Broker("POLYBUS_KAFKA_URL", "kafka://127.0.0.1:19092", "apache/kafka:3.9.0"),
    "mqtt": Broker("POLYBUS_MQTT_URL", "mqtt://127.0.0.1:1883", "eclipse-mosquitto:2.0.20"),
}

_started: dict[str, str] = {}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def brokers_required() -> bool:
    return env_flag(REQUIRE_BROKERS)


def require(reason: str) -> None:
    """Skip with ``reason``; under CI a missing requirement is a failure, not a skip."""
    if brokers_required():
        pytest.fail(f"{reason} ({REQUIRE_BROKERS}=1: broker tests must run)", pytrace=False)
    pytest.skip(reason)


def _answers(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
    for host_port in hosts:
        host, _, port = host_port.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _start_container(name: str) -> str:  # pragma: no cover - needs a Docker engine
    from testcontainers.core.container import DockerContainer

    broker = BROKERS[name]
    ports = {"redis": 6379, "nats": 4222, "rabbitmq": 5672, "kafka": 9092, "mqtt": 1883}
    assert broker.image is not None
    container = DockerContainer(broker.image).with_exposed_ports(ports[name])
    if name == "nats":
        container = container.with_command("-js")
    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(ports[name])
    scheme = urlsplit(broker.default).scheme
    auth = "guest:guest@" if name == "rabbitmq" else ""
    return f"{scheme}://{auth}{host}:{port}" + ("/" if name == "rabbitmq" else "")


def restart_command(name: str) -> list[str] | None:
    """How to restart the ``name`` broker the tests use: the shell command in
    ``POLYBUS_<NAME>_RESTART`` (``POLYBUS_REDIS_RESTART``, ``POLYBUS_AMQP_RESTART``...,
    named like the URL variable), given by whoever runs the suite; ``None`` when unset."""
    env = BROKERS[name].env.removesuffix("_URL") + "_RESTART" if name in BROKERS else None
    command = os.environ.get(env) if env else None
    return ["sh", "-c", command] if command else None


def broker_url(name: str) -> str:
    """The URL of a running ``name`` broker, or skip/fail the calling test."""
    broker = BROKERS[name]
    url = os.environ.get(broker.env) or broker.default
    if name in _started:
        return _started[name]
    if _answers(url):
        return url
    if _docker_available():
        _started[name] = _start_container(name)
        return _started[name]
    require(
        f"{name} broker unavailable at {redact_url(url)} (set {broker.env}) "
        "and no Docker engine to start one"
    )
    raise AssertionError("unreachable")
