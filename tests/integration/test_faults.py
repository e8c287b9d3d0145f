"""The shipped fault suite (polybus.testing.faults), run against every transport here.

The cases marked ``faults`` restart the local brokers, cut connections and kill server
processes. They run with ``POLYBUS_ALLOW_DISRUPTIVE=1`` or ``-m faults``, and skip
otherwise (the brokers on a developer machine are shared). Run only them with
``pytest -m faults tests/integration/test_faults.py``; set ``POLYBUS_FAULT_REPORT=path``
to collect the timings as JSON lines.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from polybus.testing.brokers import broker_url
from polybus.testing.faults import *  # noqa: F403
from polybus.testing.faults import brokers_up, ensure_brokers

TRANSPORTS = {
    "tcp": lambda: "tcp://127.0.0.1:0",
    # a transport from another distribution (tests/plugins/loopback): the seam works
    "loopback": lambda: "loopback://conformance",
    "redis": lambda: broker_url("redis"),
    "nats": lambda: broker_url("nats"),
    "rabbitmq": lambda: broker_url("rabbitmq"),
    "kafka": lambda: broker_url("kafka"),
    "mqtt": lambda: broker_url("mqtt"),
}


@pytest.fixture(params=list(TRANSPORTS))
def polybus_url(request: pytest.FixtureRequest) -> str:
    return TRANSPORTS[request.param]()


@pytest.fixture(autouse=True)
def brokers_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every case: each broker that answered before it must answer again."""
    up_before = brokers_up()
    yield
    ensure_brokers(up_before)
