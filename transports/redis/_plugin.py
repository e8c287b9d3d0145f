"""The implementation the declaration in ``__init__`` points at (imports the client library)."""

from __future__ import annotations

from polybus.plugins import TransportPlugin

from ._client import RedisClientTransport
from ._faults import RedisFaults
from ._options import RedisOptions
from ._server import RedisServerTransport

__all__ = ["PLUGIN"]

PLUGIN = TransportPlugin(RedisOptions, RedisClientTransport, RedisServerTransport, RedisFaults())
