"""Redis transport (``redis://[user:pass@]host:port[/db]``, ``rediss://`` for TLS).

Pure pub/sub, wire-compatible with NestJS (docs/PROTOCOL.md §3): a request is published on its
route channel as ``{"pattern", "data", "id"}`` (an event without ``id``) and its replies
come back on ``<channel>.reply``. Each side holds exactly two connections whatever the load:
a subscriber and a publisher.

- The client subscribes to ``<route>.reply`` and waits for the confirmation before it
  publishes; one subscription per reply channel is shared by every pending request on it
  (reference-counted) and kept for ``reply_linger`` seconds after the last one ends, so a
  steady stream of calls does not subscribe and unsubscribe over and over. Replies for ids
  this client does not wait for (other clients share the channel) are dropped by core.
- The server subscribes to every handler route (``PSUBSCRIBE`` with ``wildcards``) and
  replies on ``<channel the request arrived on>.reply``.
- Headers and the caller's deadline ride in the packet's NestJS v12 ``metadata`` object
  (``send_metadata``), which Nest servers accept and expose (``RedisContext.getMetadata()``).
- Every command written in one event-loop iteration leaves in one socket write (a
  pipeline); the connections run RESP2 without socket timeouts, and messages are read
  straight from redis-py's (hiredis) parser rather than through ``PubSub``.
- A lost connection fails the pending requests, then both connections are rebuilt with
  backoff and every subscription is restored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybus.plugins import LocalBroker, TransportSpec, lazy_attributes

if TYPE_CHECKING:
    from ._client import RedisClientTransport
    from ._common import FEATURES
    from ._link import MessageHandler
    from ._options import RedisOptions
    from ._plugin import PLUGIN
    from ._server import RedisContext, RedisServerTransport

__all__ = [
    "FEATURES",
    "PLUGIN",
    "SPEC",
    "MessageHandler",
    "RedisClientTransport",
    "RedisContext",
    "RedisOptions",
    "RedisServerTransport",
]

SPEC = TransportSpec(
    name="redis",
    schemes=("redis", "rediss"),
    implementation="polybus.transports.redis._plugin:PLUGIN",
    nest_names=("REDIS",),
    nest_number=1,
    extra="redis",
    test_broker=LocalBroker("POLYBUS_REDIS_URL", "redis://127.0.0.1:6379", "redis:7.2.5"),
)

__getattr__ = lazy_attributes(__name__)
