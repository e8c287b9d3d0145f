"""Clients without a default timeout: no deadline sent, kept or checked per request.

Measures what the timeout machinery costs end to end (the deadline in the envelope's
metadata or the message headers, the client's deadline queue, the server's expiry check):
``python -m bench.ab bench/proposals/no_timeout.py --transports tcp,nats,rabbitmq
--scenarios rpc100``.
"""

from __future__ import annotations

from polybus.client import ClientProxy

ClientProxy.__init__.__kwdefaults__["timeout"] = None
