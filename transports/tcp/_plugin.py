"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import TcpClientTransport
from ._faults import TcpFaults
from ._options import TcpOptions
from ._server import TcpServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(TcpOptions, TcpClientTransport, TcpServerTransport, faults=TcpFaults())
