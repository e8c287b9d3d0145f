"""RabbitMQ ``wildcards`` routing: NestJS's ``ServerRMQ.matchRmqPattern`` rules, ported."""

from __future__ import annotations

import pytest

pytest.importorskip("aio_pika")

from polybus.transports.rabbitmq._server import matches_topic

# (handler pattern, pattern string, NestJS's answer), read off server-rmq.js 12.1.1
VECTORS = [
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.b", "a.b", True),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("#", "anything.at.all", True),
    ("#", "", True),
    ("*", "", False),
    ("a.#.c", "a.b.c", False),  # '#' only ends a pattern in NestJS's matcher
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("a.b", "a.b", True),
    ("a.*", "a.", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), VECTORS)
def test_matches_as_nestjs(pattern: str, key: str, expected: bool) -> None:
    assert matches_topic(pattern, key) is expected


def test_the_first_registered_wildcard_route_wins() -> None:
    """NestJS tries wildcard handlers in registration order, after the exact route."""
    from polybus.patterns import WildcardRoutes

    first = WildcardRoutes(["a.#", "a.*", "a.b"], "*#", matches_topic)
    assert first.route_of("a.b") == "a.b"
    assert first.route_of("a.c") == "a.#"
    assert WildcardRoutes(["a.*", "a.#"], "*#", matches_topic).route_of("a.c") == "a.*"
    assert first.route_of("b") is None
