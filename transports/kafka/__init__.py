"""Kafka transport (``kafka://host:port[,host:port...]``), wire-compatible with NestJS.

docs/PROTOCOL.md §7: the record value is the data itself (no JSON envelope); the pattern is the
topic; correlation and status travel in the headers ``kafka_correlationId``,
``kafka_replyTopic``, ``kafka_replyPartition``, ``kafka_nest-err`` and
``kafka_nest-is-disposed``. Only string patterns that are legal topic names can be used
(``math.sum``): an object pattern is a :class:`~polybus.errors.ConfigError`.

- Client (:class:`KafkaClientTransport`): replies are read by explicit partition assignment
  of ``<route>.reply`` (no consumer group, so no rebalance ever loses a reply); the reply
  partition is positioned at its end before the first request is produced.
- Server (:class:`KafkaServerTransport`): one consumer group per service, offsets committed
  only after handling (at-least-once), partitions handled concurrently with their order kept,
  finished offsets committed when partitions are revoked. ``delete_resources()`` deletes the
  topics it created.

Built on aiokafka (``pip install polybus[kafka]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybus.plugins import LocalBroker, TransportSpec, lazy_attributes

if TYPE_CHECKING:
    from ._client import KafkaClientTransport
    from ._common import FEATURES, Codec, check_topic
    from ._context import KafkaContext
    from ._options import KafkaOptions
    from ._plugin import PLUGIN
    from ._server import KafkaServerTransport

__all__ = [
    "FEATURES",
    "PLUGIN",
    "SPEC",
    "Codec",
    "KafkaClientTransport",
    "KafkaContext",
    "KafkaOptions",
    "KafkaServerTransport",
    "check_topic",
]

SPEC = TransportSpec(
    name="kafka",
    schemes=("kafka",),
    implementation="polybus.transports.kafka._plugin:PLUGIN",
    nest_names=("KAFKA",),
    nest_number=6,
    extra="kafka",
    test_broker=LocalBroker(
        "POLYBUS_KAFKA_URL", "kafka://127.0.0.1:19092", "apache/kafka:3.9.0", container_port=9092
    ),
)

__getattr__ = lazy_attributes(__name__)
