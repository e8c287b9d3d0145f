"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import RabbitMQClientTransport
from ._faults import RabbitMQFaults
from ._options import RabbitMQOptions
from ._server import RabbitMQServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(
    RabbitMQOptions,
    RabbitMQClientTransport,
    RabbitMQServerTransport,
    faults=RabbitMQFaults(),
)
