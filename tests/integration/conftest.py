"""Shared fixtures of the integration tests: the NestJS harness on sys.path, the broker URL
of a module's ``broker`` marker, a unique prefix, and the skip when NestJS cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from polybus.testing.brokers import broker_url

sys.path.insert(0, str(Path(__file__).parent / "nest"))

import harness


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """The URL of the broker named by the test's ``broker`` marker."""
    marker = request.node.get_closest_marker("broker")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: `url` needs a broker(...) marker")
    return broker_url(marker.args[0])


@pytest.fixture
def prefix() -> str:
    """A fresh prefix for names (patterns, queues, topics), valid on every transport."""
    return str(harness.unique_prefix())


@pytest.fixture
def nest_ready() -> None:
    """Skip (a failure with POLYBUS_REQUIRE_BROKERS=1) when NestJS cannot run here."""
    reason = harness.node_available()
    if reason:
        pytest.skip(f"NestJS interop: {reason}")
