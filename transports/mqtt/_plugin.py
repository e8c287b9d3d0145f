"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import MqttClientTransport
from ._faults import MqttFaults
from ._options import MqttOptions
from ._server import MqttServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(MqttOptions, MqttClientTransport, MqttServerTransport, MqttFaults())
