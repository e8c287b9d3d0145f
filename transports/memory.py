"""In-memory transport (``memory://<name>``): the semantics of TCP without a socket.

For users' unit tests. Messages still go through the serializer, so what would fail to
cross a real transport fails here too. Several servers on one name compete for messages
(round robin); a request for a pattern no server handles gets NestJS's no-handler error.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from polybus.abc import (
    Context,
    Features,
    MessageSink,
    Release,
    ReplySink,
    RouteSpec,
    no_release,
)
from polybus.config import TransportOptions, split_url
from polybus.errors import TransportError
from polybus.packets import (
    MISSING,
    Event,
    Reply,
    Request,
    decode_incoming,
    encode_event,
    encode_reply,
    encode_request,
    parse_deadline,
    read_reply,
)
from polybus.plugins import TransportPlugin, TransportSpec
from polybus.serializers import Serializer

__all__ = [
    "PLUGIN",
    "SPEC",
    "MemoryClientTransport",
    "MemoryContext",
    "MemoryOptions",
    "MemoryServerTransport",
]

FEATURES = Features(
    name="memory",
    unknown_pattern="error",
    competing_consumers=True,
    headers=True,
    unreadable_reply="fails_request",
)


@dataclass
class MemoryOptions(TransportOptions):
    name: str = "default"

    @classmethod
    def from_url(cls, url: str) -> MemoryOptions:
        parts = split_url(url, ("memory",))
        return cls(name=parts.netloc or parts.path.lstrip("/") or "default")


class _Bus:
    """One named in-memory endpoint: the servers listening on it."""

    def __init__(self) -> None:
        self.servers: list[MemoryServerTransport] = []
        self._turn = itertools.count()

    def pick(self) -> MemoryServerTransport | None:
        if not self.servers:
            return None
        return self.servers[next(self._turn) % len(self.servers)]


_BUSES: dict[str, _Bus] = {}


def _bus(name: str) -> _Bus:
    bus = _BUSES.get(name)
    if bus is None:
        bus = _BUSES[name] = _Bus()
    return bus


class MemoryContext(Context):
    """Context of an in-memory message."""

    __slots__ = ("_client", "_serializer")
    transport_name = "memory"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        client: MemoryClientTransport | None,
        serializer: Serializer,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(pattern, data, id, metadata, parse_deadline(metadata))
        self._client = client
        self._serializer = serializer

    async def send_reply(self, reply: Reply) -> None:
        """The server's serializer writes the reply, the client's reads it, as on a wire."""
        client = self._client
        if client is None or client._sink is None:
            return
        body = encode_reply(self._serializer, reply)
        limit = client.options.max_message_bytes
        # the context knows its request: an unreadable reply fails it at once
        read_reply(client._sink, client._serializer, body, limit, "memory", str(self.id))


class MemoryClientTransport:
    features = FEATURES

    def __init__(self, options: MemoryOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: ReplySink | None = None

    async def connect(self, sink: ReplySink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    def _server(self) -> MemoryServerTransport:
        if self._sink is None:
            raise TransportError("memory client is closed")
        server = _bus(self.options.name).pick()
        if server is None:
            raise TransportError(f"no server listens on memory://{self.options.name}")
        return server

    async def request(self, request: Request) -> Release:
        server = self._server()
        body = self.options.check_size(encode_request(self._serializer, request, metadata=True))
        await server._deliver(body, self)
        return no_release

    async def publish_event(self, event: Event) -> None:
        server = self._server()
        body = self.options.check_size(
            encode_event(self._serializer, event, pattern_as_route=True, metadata=True)
        )
        await server._deliver(body, None)

    def __repr__(self) -> str:
        return f"MemoryClientTransport(memory://{self.options.name})"


class MemoryServerTransport:
    features = FEATURES

    def __init__(self, options: MemoryOptions, serializer: Serializer) -> None:
        self.options = options
        self._serializer = serializer
        self._sink: MessageSink | None = None

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None:
        self._sink = sink
        _bus(self.options.name).servers.append(self)

    async def stop(self) -> None:
        bus = _bus(self.options.name)
        if self in bus.servers:
            bus.servers.remove(self)

    async def close(self) -> None:
        await self.stop()
        self._sink = None

    async def _deliver(self, body: bytes, client: MemoryClientTransport | None) -> None:
        sink = self._sink
        if sink is None:
            raise TransportError(f"memory://{self.options.name} server is closed")
        incoming = decode_incoming(self._serializer, body)
        if incoming.id is MISSING:
            client = None
        await sink(
            MemoryContext(
                incoming.pattern,
                incoming.data,
                incoming.id,
                client,
                self._serializer,
                incoming.metadata,
            )
        )

    def __repr__(self) -> str:
        return f"MemoryServerTransport(memory://{self.options.name})"


PLUGIN = TransportPlugin(MemoryOptions, MemoryClientTransport, MemoryServerTransport)
SPEC = TransportSpec(
    name="memory",
    schemes=("memory",),
    implementation="polybus.transports.memory:PLUGIN",
    nest_names=("MEMORY",),
)
