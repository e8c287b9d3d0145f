"""NATS transport (``nats://host:4222``, ``tls://`` for TLS), wire-compatible with NestJS.

docs/PROTOCOL.md §4: the subject is the route string; the body is the NestJS JSON envelope
(``{"pattern": raw, "data", "id"}``, events without ``id`` and without reply subject); a
server publishes every reply packet to the request's reply subject.

Client: one connection and ONE wildcard inbox subscription (``_INBOX.<nuid>.>``); each
request goes out with reply subject ``_INBOX.<nuid>.<request id>`` and replies are
correlated by that last token (a NestJS server answers whatever reply subject it got).
When nobody subscribes to the subject the NATS server answers the inbox with an empty
``503`` status message, which becomes :class:`~polybus.errors.NoRespondersError` (NestJS:
``EmptyResponseException``). Writes are buffered by nats-py and flushed once per
event-loop iteration. nats-py reconnects by itself and restores subscriptions; pending
requests fail as soon as the connection drops.

Server: one subscription per handler route (the route is what it dispatches on, wildcards
included), no queue group unless ``queue`` is set (server option, or per handler:
``@app.message_pattern(p, queue="q")``), replies without headers like NestJS.

JetStream (``?jetstream=true``, opt-in, polybus only: NestJS has no JetStream transport):
``emit()`` resolves once the stream acknowledged the event; event routes are read from
durable pull consumers, acknowledged after the handler (see :mod:`._jetstream`,
:mod:`._consumer`). Requests stay core NATS request-reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybus.plugins import LocalBroker, TransportSpec, lazy_attributes

if TYPE_CHECKING:
    from ._client import NatsClientTransport
    from ._common import FEATURES
    from ._options import NatsOptions
    from ._plugin import PLUGIN
    from ._server import NatsContext, NatsServerTransport

__all__ = [
    "FEATURES",
    "PLUGIN",
    "SPEC",
    "NatsClientTransport",
    "NatsContext",
    "NatsOptions",
    "NatsServerTransport",
]

SPEC = TransportSpec(
    name="nats",
    schemes=("nats", "tls"),
    implementation="polybus.transports.nats._plugin:PLUGIN",
    nest_names=("NATS",),
    nest_number=2,
    extra="nats",
    test_broker=LocalBroker("POLYBUS_NATS_URL", "nats://127.0.0.1:4222", "nats:2.10.22", ("-js",)),
)

__getattr__ = lazy_attributes(__name__)
