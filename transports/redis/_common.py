"""What both halves share: the features and the mapping of connection failures."""

from __future__ import annotations

import logging

from polybus.abc import Features
from polybus.errors import TransportError

__all__ = ["FEATURES", "transport_error"]

log = logging.getLogger("polybus.redis")

FEATURES = Features(
    name="redis",
    unknown_pattern="timeout",
    broadcast=True,
    headers=True,
)


def transport_error(exc: BaseException) -> TransportError:
    """``exc`` itself if it is a ``TransportError``, else one caused by it."""
    if isinstance(exc, TransportError):
        return exc
    error = TransportError(f"redis connection lost: {exc or type(exc).__name__}")
    error.__cause__ = exc
    return error
