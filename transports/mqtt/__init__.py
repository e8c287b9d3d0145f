"""MQTT transport (``mqtt://[user:pass@]host:port``, ``mqtts://`` for TLS), wire-compatible
with NestJS (docs/PROTOCOL.md §6), on aiomqtt (paho-mqtt).

- A request is published on its route as ``{"pattern", "data", "id"}`` (an event without
  ``id``), QoS 0 unless the ``qos`` option or an :class:`MqttRecord` says otherwise; the
  server answers on ``<topic>/reply`` at QoS 0.
- The client subscribes to ``<route>/reply`` (waiting for the SUBACK) before its first
  request to the route and keeps that subscription for its lifetime: no per-request
  subscribe/unsubscribe, so nothing races a publish at any load.
- Routes with ``+``/``#`` are topic filters; ``queue`` makes the server subscribe as
  ``$share/<queue>/<route>`` (competing instances); without it every instance gets every
  message (broadcast).
- Headers and the caller's deadline travel as MQTT 5 user properties with
  ``protocol_version=5``, else in the packet's NestJS v12 ``metadata``.
- Each side holds one connection; when it drops, pending requests fail, then it is
  rebuilt with backoff and every subscription is restored. ``clean_session=False`` with a
  fixed ``client_id`` (MQTT 5: ``session_expiry``) makes the broker keep QoS 1/2 messages
  for a server while it is away.
- The server acknowledges a QoS 1 message once its handler is done (a message taken
  during shutdown stays unacknowledged, so a persistent session gets it again); QoS 2's
  PUBREC goes on receipt (paho), its PUBCOMP after the handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybus.plugins import LocalBroker, TransportSpec, lazy_attributes

if TYPE_CHECKING:
    from ._client import MqttClientTransport
    from ._common import FEATURES
    from ._options import MqttOptions
    from ._plugin import PLUGIN
    from ._record import MqttRecord
    from ._server import MqttContext, MqttServerTransport

__all__ = [
    "FEATURES",
    "PLUGIN",
    "SPEC",
    "MqttClientTransport",
    "MqttContext",
    "MqttOptions",
    "MqttRecord",
    "MqttServerTransport",
]

SPEC = TransportSpec(
    name="mqtt",
    schemes=("mqtt", "mqtts"),
    implementation="polybus.transports.mqtt._plugin:PLUGIN",
    nest_names=("MQTT",),
    nest_number=4,
    extra="mqtt",
    test_broker=LocalBroker(
        "POLYBUS_MQTT_URL", "mqtt://127.0.0.1:1883", "eclipse-mosquitto:2.0.20"
    ),
)

__getattr__ = lazy_attributes(__name__)
