"""RabbitMQ transport (``amqp://`` / ``amqps://``), wire-compatible with NestJS ``Transport.RMQ``.

Names: the package, its classes (``RabbitMQ*``) and ``Features.name`` say ``rabbitmq``; the
URL scheme is the protocol's (``amqp``); ``RMQ`` is only NestJS's name for it, accepted in
a NestJS-style dict.

docs/PROTOCOL.md §5: one durable work queue per service carries every request and event;
requests go to the default exchange with routing key = the queue, ``correlation_id`` = the
request id and ``reply_to = amq.rabbitmq.reply-to`` (direct reply-to); replies come back
without ``id`` in the body and are matched by ``correlation_id``.

Built on aio-pika's robust connection (reconnects with backoff and reopens the channel;
the queue declaration and our consumers are restored on the new channel). The hot path
talks to aio-pika's underlying aiormq channel: publishes are marshalled with pamqp and
written through the channel's connection write queue, every publish made in one
event-loop iteration in one write (corking). In a durable configuration (``persistent``
messages) the channel is in confirm mode and each publish also waits for the broker's
confirm, so ``emit()``/``send()`` resolve only once the broker has the message
(``publisher_confirms=false`` opts out). Consumers are
plain aiormq consumers that get the raw ``DeliveredMessage`` (the aio-pika
``IncomingMessage`` is built only if a handler asks for ``context.message``).

Exchanges as NestJS 11/12 (docs/PROTOCOL.md §5.5): ``exchange``, ``exchange_type``
(``topic`` by default), ``routing_key``, ``exchange_arguments`` and ``wildcards`` (the
server binds every handler route and routes by ``*``/``#`` patterns; the client publishes
by pattern to the exchange, as it does with a ``fanout`` type).

URL: ``amqp://user:pass@host:5672/vhost?queue=orders&prefetch_count=50&no_ack=false``;
``amqps://`` takes ``ca_file``/``cert_file``/``key_file`` (also ``ca``/``cert``/``key``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybus.plugins import TransportSpec, lazy_attributes

if TYPE_CHECKING:
    from ._client import RabbitMQClientTransport
    from ._common import DEFAULT_SERVER_PREFETCH, DIRECT_REPLY_TO, FEATURES
    from ._options import RabbitMQOptions
    from ._plugin import PLUGIN
    from ._server import RabbitMQContext, RabbitMQServerTransport

__all__ = [
    "DEFAULT_SERVER_PREFETCH",
    "DIRECT_REPLY_TO",
    "FEATURES",
    "PLUGIN",
    "SPEC",
    "RabbitMQClientTransport",
    "RabbitMQContext",
    "RabbitMQOptions",
    "RabbitMQServerTransport",
]

SPEC = TransportSpec(
    name="rabbitmq",
    schemes=("amqp", "amqps"),
    implementation="polybus.transports.rabbitmq._plugin:PLUGIN",
    nest_names=("RMQ", "RABBITMQ"),
    nest_number=5,
    extra="rabbitmq",
)
"""The declaration (registered in pyproject.toml's ``polybus.transports`` entry points);
importing it imports no client library."""

__getattr__ = lazy_attributes(
    __name__,
    {
        "RabbitMQClientTransport": "._client",
        "DEFAULT_SERVER_PREFETCH": "._common",
        "DIRECT_REPLY_TO": "._common",
        "FEATURES": "._common",
        "RabbitMQOptions": "._options",
        "RabbitMQContext": "._server",
        "RabbitMQServerTransport": "._server",
        "PLUGIN": "._plugin",
    },
)
