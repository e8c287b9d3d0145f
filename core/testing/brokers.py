"""Where the tests find their brokers: each transport's declaration says it.

A transport's :class:`~polybus.plugins.TransportSpec` names its test broker
(:class:`~polybus.plugins.LocalBroker`): the URL comes from its environment variable first
(``POLYBUS_<NAME>_URL``), else the declared default; if nothing answers there and a
Docker engine is available, testcontainers starts one; otherwise the test is skipped with
the reason — except when whoever runs the suite asks for brokers
(``POLYBUS_REQUIRE_BROKERS=1``, as polybus's own CI does): then a broker test that cannot
run fails. This module knows no broker itself.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit, urlunsplit

import pytest

from ..config import redact_url
from ..plugins import LocalBroker, transport_specs

__all__ = [
    "REQUIRE_BROKERS",
    "broker_url",
    "brokers_required",
    "declared_brokers",
    "env_flag",
    "local_url",
    "require",
    "restart_command",
]

REQUIRE_BROKERS = "POLYBUS_REQUIRE_BROKERS"
"""Set to 1 to make a broker test that cannot run a failure instead of a skip."""

_started: dict[str, str] = {}


def declared_brokers() -> dict[str, LocalBroker]:
    """Transport name → the test broker it declares, for every transport that does."""
    return {spec.name: spec.test_broker for spec in transport_specs() if spec.test_broker}


def local_url(name: str) -> str:
    """The ``name`` broker's URL as the environment gives it, else its declared default
    (whether or not something answers there)."""
    broker = declared_brokers()[name]
    return os.environ.get(broker.env) or broker.url


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


def _start_container(broker: LocalBroker) -> str:  # pragma: no cover - needs a Docker engine
    from testcontainers.core.container import DockerContainer

    parts = urlsplit(broker.url)
    port = broker.container_port or parts.port
    assert broker.image is not None and port is not None
    container = DockerContainer(broker.image).with_exposed_ports(port)
    if broker.command:
        container = container.with_command(" ".join(broker.command))
    container.start()
    host = container.get_container_host_ip()
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    netloc = f"{auth}{host}:{container.get_exposed_port(port)}"
    return urlunsplit(parts._replace(netloc=netloc))


def restart_command(name: str) -> list[str] | None:
    """How to restart the ``name`` broker the tests use: the shell command in
    ``POLYBUS_<NAME>_RESTART`` (``POLYBUS_REDIS_RESTART``, ``POLYBUS_AMQP_RESTART``...,
    named like the URL variable), given by whoever runs the suite; ``None`` when unset."""
    broker = declared_brokers().get(name)
    command = os.environ.get(broker.env.removesuffix("_URL") + "_RESTART") if broker else None
    return ["sh", "-c", command] if command else None


def broker_url(name: str) -> str:
    """The URL of a running ``name`` broker, or skip/fail the calling test."""
    broker = declared_brokers()[name]
    url = os.environ.get(broker.env) or broker.url
    if name in _started:
        return _started[name]
    if _answers(url):
        return url
    if broker.image is not None and _docker_available():
        _started[name] = _start_container(broker)
        return _started[name]
    require(
        f"{name} broker unavailable at {redact_url(url)} (set {broker.env}) "
        "and no Docker engine to start one"
    )
    raise AssertionError("unreachable")
