"""Status listeners of a client or a service: added with an unsubscribe, told in turn."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Listeners"]

T = TypeVar("T")


class Listeners(Generic[T]):
    """Callbacks told of each change; one that raises is logged and the others still run."""

    __slots__ = ("_listeners", "_log", "_what")

    def __init__(self, what: str, log: logging.Logger) -> None:
        self._listeners: list[Callable[[T], None]] = []
        self._what = what
        self._log = log

    def add(self, listener: Callable[[T], None]) -> Callable[[], None]:
        """Add ``listener``; returns what removes it again."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, value: T) -> None:
        for listener in list(self._listeners):
            try:
                listener(value)
            except Exception:
                self._log.exception("%s listener failed", self._what)
