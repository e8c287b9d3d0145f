"""What both halves share: the features and the mapping of redis-py's errors."""

from __future__ import annotations

import logging

from polybus.abc import Features
from polybus.errors import ErrorMap, TransportError

__all__ = ["ERRORS", "FEATURES"]

log = logging.getLogger("polybus.redis")

FEATURES = Features(
    name="redis",
    unknown_pattern="timeout",
    broadcast=True,
    headers=True,
)

ERRORS = ErrorMap((Exception, TransportError, None))
"""Whatever redis-py (or the socket under it) raises ends the connection."""
