"""One error hierarchy for everything polybus raises.

::

    PolybusError
    ├── ConfigError (ValueError)        bad URL, unknown scheme, bad option, unusable pattern
    ├── TransportError (ConnectionError) connect/IO failures, lost connection, closed client
    │   └── NoRespondersError            the broker says nobody listens on the route (NATS)
    ├── ProtocolError (ValueError)       a malformed frame or packet, an oversized message
    ├── RequestTimeout (TimeoutError)    no (final) reply within the timeout
    └── RpcError                         the remote handler failed; ``.error`` is its payload

``RpcException`` is what a *handler* raises to send a chosen error payload to the caller,
as NestJS's ``RpcException`` does; the caller receives it as an ``RpcError``.

Adapters wrap every broker-library exception at their boundary, each through one
:class:`ErrorMap` (its table of library exceptions → polybus errors), so no
``redis``/``nats``/``aio_pika``/``aiokafka`` exception reaches user code.
"""

from __future__ import annotations

import reprlib
from types import TracebackType
from typing import Any

__all__ = [
    "ConfigError",
    "ErrorMap",
    "NoRespondersError",
    "PolybusError",
    "ProtocolError",
    "RequestTimeout",
    "RpcError",
    "RpcException",
    "TransportError",
    "describe_error",
    "short_repr",
]

NO_HANDLER_MESSAGE = "There is no matching message handler defined in the remote service."


class PolybusError(Exception):
    """Root of every error polybus raises."""


class ConfigError(PolybusError, ValueError):
    """Configuration that cannot work: unknown scheme, bad option, unusable pattern."""


class TransportError(PolybusError, ConnectionError):
    """The transport could not carry the message: connect/IO failure, lost connection, closed."""


class NoRespondersError(TransportError):
    """The broker reported that nothing listens on the route (NATS no-responders)."""


class ProtocolError(PolybusError, ValueError):
    """A frame or packet that breaks the wire protocol (malformed, oversized, wrong shape)."""


class RequestTimeout(PolybusError, TimeoutError):
    """No reply (or no end of stream) arrived within the request's timeout."""


class RpcError(PolybusError):
    """The remote side answered with an error; ``error`` is the payload exactly as received.

    For a NestJS ``RpcException({...})`` that is the object itself; for ``RpcException('x')``
    it is ``{"status": "error", "message": "x"}``; for any other failure
    ``{"status": "error", "message": "Internal server error"}``; for a pattern without handler
    the string :data:`NO_HANDLER_MESSAGE`.
    """

    def __init__(self, error: Any) -> None:
        super().__init__(error)
        self.error = error

    @property
    def no_handler(self) -> bool:
        """True when the server had no handler for the pattern."""
        return isinstance(self.error, str) and self.error == NO_HANDLER_MESSAGE

    def __str__(self) -> str:
        if isinstance(self.error, dict) and "message" in self.error:
            return str(self.error["message"])
        return str(self.error)


class RpcException(PolybusError):
    """Raise in a handler to send ``error`` to the caller (NestJS ``RpcException``).

    An object (dict or list) crosses as is; anything else as
    ``{"status": "error", "message": str(error)}``.
    """

    def __init__(self, error: Any) -> None:
        super().__init__(error)
        self.error = error

    def to_wire(self) -> Any:
        if isinstance(self.error, (dict, list)):
            return self.error
        return {"status": "error", "message": self.error}


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` (just the type name when the message is empty), for the
    text of an error that wraps a client library's exception."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


Sources = type[BaseException] | tuple[type[BaseException], ...]
Entry = tuple[Sources, type[PolybusError], str | None]
"""One row of an :class:`ErrorMap`: the library's exception type(s), the polybus error
they become and what to say of them (``None``: the library's own words)."""


class ErrorMap:
    """One adapter's mapping of its client library's exceptions to polybus's errors, in
    the manner of httpx's ``map_httpcore_exceptions``: a table, read in order, first
    match wins.

    ``with ERRORS("publish to %r", subject):`` re-raises a listed exception as its polybus
    error, ``"<what>: <detail>"``, caused by it (``what`` is formatted with ``args``, as a
    log message, only then); a :class:`PolybusError` or an unlisted exception passes
    unchanged. :meth:`error` gives the error without raising it (a failed future, a lost
    connection reported to a callback), and for a hot path, where the context manager's
    three calls would cost more than the call it guards (a publish by the library, which
    raises no polybus error): ``except ERRORS.catches as exc: raise ERRORS.error(exc,
    what) from exc``."""

    __slots__ = ("_entries", "catches")

    def __init__(self, *entries: Entry) -> None:
        self._entries = entries
        self.catches: tuple[type[BaseException], ...] = tuple(
            source
            for sources, _, _ in entries
            for source in (sources if isinstance(sources, tuple) else (sources,))
        )
        """Every exception type the table lists."""

    def error(self, exc: BaseException, what: str, *args: object) -> PolybusError:
        """The polybus error for ``exc`` raised while doing ``what % args``: ``exc``
        itself if it is one; a ``TransportError`` for an exception the table does not
        list."""
        if isinstance(exc, PolybusError):
            return exc
        target: type[PolybusError] = TransportError
        detail: str | None = None
        for sources, mapped, said in self._entries:
            if isinstance(exc, sources):
                target, detail = mapped, said
                break
        if args:
            what = what % args
        error = target(f"{what}: {describe_error(exc) if detail is None else detail}")
        error.__cause__ = exc
        return error

    def __call__(self, what: str, *args: object) -> _Mapping:
        return _Mapping(self, what, args)


class _Mapping:
    """The context manager of :meth:`ErrorMap.__call__`."""

    __slots__ = ("_args", "_map", "_what")

    def __init__(self, map: ErrorMap, what: str, args: tuple[object, ...]) -> None:
        self._map = map
        self._what = what
        self._args = args

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, PolybusError) or not isinstance(exc, self._map.catches):
            return
        raise self._map.error(exc, self._what, *self._args) from exc


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = 120
_SHORT.maxother = 120
_SHORT.maxdict = _SHORT.maxlist = 8


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for logs: values from the wire may be nested 1,000 deep or be
    megabytes long, and a plain ``%r`` of them raises ``RecursionError`` or floods the log."""
    try:
        return _SHORT.repr(value)
    except Exception:  # a foreign object whose __repr__ fails
        return f"<{type(value).__name__}>"
