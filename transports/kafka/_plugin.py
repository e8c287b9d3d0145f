"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import KafkaClientTransport
from ._faults import KafkaFaults
from ._options import KafkaOptions
from ._server import KafkaServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(KafkaOptions, KafkaClientTransport, KafkaServerTransport, KafkaFaults())
