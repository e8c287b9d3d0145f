"""Middleware sets the floor bench measures: ``python -m bench --floor --middleware noop``.

Each entry builds a fresh list of middleware objects usable on both sides (each object is
given to the service and to the client); the bench measures every set against none, in
the same session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from polybus import ClientMiddleware, ServerMiddleware


class PassThrough(ClientMiddleware, ServerMiddleware):
    """Does nothing: the cost of the middleware machinery itself."""


def prometheus() -> list[Any]:
    """polybus.prometheus (the ``[prometheus]`` extra), counting into a registry of its own."""
    from prometheus_client import CollectorRegistry

    from polybus.prometheus import PrometheusMiddleware

    return [PrometheusMiddleware(registry=CollectorRegistry())]


SETS: dict[str, Callable[[], list[Any]]] = {
    "noop": lambda: [PassThrough()],
    "prometheus": prometheus,
}
