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

Adapters wrap every broker-library exception at their boundary
(``raise TransportError(...) from exc``), so no ``redis``/``nats``/``aio_pika``/``aiokafka``
exception reaches user code.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = [
    "ConfigError",
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
