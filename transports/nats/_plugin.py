"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import NatsClientTransport
from ._faults import NatsFaults
from ._jetstream import features_for
from ._options import NatsOptions
from ._server import NatsServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(
    NatsOptions,
    NatsClientTransport,
    NatsServerTransport,
    NatsFaults(),
    options_features=features_for,
)
