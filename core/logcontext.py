"""The message a log record is about: its route and correlation id on the record.

While a :class:`~polybus.Microservice` handles a message, the handling task (and every task
it starts) knows the message's route and correlation id (the request id NestJS correlates
the reply with; ``None`` for an event). :class:`LogContextFilter` puts them on each record
as ``polybus_route`` and ``polybus_correlation_id`` (``None`` outside a message), so a
format string may name them. polybus's own server logger has it installed; install it on
a ``logging.Handler`` for the records handlers log::

    handler = logging.StreamHandler()
    handler.addFilter(LogContextFilter())
    handler.setFormatter(
        logging.Formatter("%(polybus_route)s %(polybus_correlation_id)s %(message)s")
    )

:func:`log_fields` gives the same fields as a dict (structlog processors, JSON loggers).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

__all__ = ["CORRELATION_FIELD", "ROUTE_FIELD", "LogContextFilter", "log_fields"]

ROUTE_FIELD = "polybus_route"
CORRELATION_FIELD = "polybus_correlation_id"

MESSAGE: contextvars.ContextVar[tuple[str | None, Any]] = contextvars.ContextVar(
    "polybus_message", default=(None, None)
)
"""``(route, correlation id)`` of the message being handled: core sets it at the start of
each message's handling, which runs in a context of its own (nothing to reset)."""


def log_fields() -> dict[str, Any]:
    """``{"polybus_route": ..., "polybus_correlation_id": ...}`` of the message being
    handled here (both ``None`` outside one)."""
    route, correlation_id = MESSAGE.get()
    return {ROUTE_FIELD: route, CORRELATION_FIELD: correlation_id}


class LogContextFilter(logging.Filter):
    """Adds ``polybus_route`` and ``polybus_correlation_id`` to every record it sees (a
    field the caller passed in ``extra`` is kept); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        route, correlation_id = MESSAGE.get()
        if not hasattr(record, ROUTE_FIELD):
            setattr(record, ROUTE_FIELD, route)
        if not hasattr(record, CORRELATION_FIELD):
            setattr(record, CORRELATION_FIELD, correlation_id)
        return True
