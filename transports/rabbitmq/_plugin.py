"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import RmqClientTransport
from ._faults import RmqFaults
from ._options import RmqOptions
from ._server import RmqServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(
    "RMQ", RmqOptions, RmqClientTransport, RmqServerTransport, faults=RmqFaults()
)
