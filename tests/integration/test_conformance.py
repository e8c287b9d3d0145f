"""The shipped conformance suite, run against every transport of this repository."""

from __future__ import annotations

import pytest

from polybus.testing.brokers import broker_url
from polybus.testing.conformance import *  # noqa: F403

TRANSPORTS = {
    "memory": lambda: "memory://conformance",
    "tcp": lambda: "tcp://127.0.0.1:0",
    # a transport from another distribution (tests/plugins/loopback): the seam works
    "loopback": lambda: "loopback://conformance",
    "redis": lambda: broker_url("redis"),
    "nats": lambda: broker_url("nats"),
    "nats-jetstream": lambda: _with_query(broker_url("nats"), "jetstream=true"),
    "rabbitmq": lambda: broker_url("rabbitmq"),
    "kafka": lambda: broker_url("kafka"),
    "mqtt": lambda: broker_url("mqtt"),
}


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture(params=list(TRANSPORTS))
def polybus_url(request: pytest.FixtureRequest) -> str:
    return TRANSPORTS[request.param]()
