"""What the contexts of a server need of it: its codec, its producer, its topic admin and
the committer of its partitions. The server owns one; its contexts only call it."""

from __future__ import annotations

import asyncio
from typing import Any

from polybus.errors import TransportError

from ._admin import TopicAdmin
from ._common import Codec, OutRecord, check_topic, produce
from ._options import KafkaOptions
from ._partition import Committer

__all__ = ["Outlet"]


class Outlet:
    """Produces the records a server's contexts send (replies, dead letters)."""

    __slots__ = ("_known_topics", "admin", "codec", "commits", "options", "producer")

    def __init__(
        self, options: KafkaOptions, codec: Codec, admin: TopicAdmin, commits: Committer
    ) -> None:
        self.options = options
        self.codec = codec
        self.admin = admin
        self.commits = commits
        self.producer: Any = None
        """The server's producer while it listens; ``None`` before and once closed."""
        self._known_topics: set[str] = set()

    async def send(self, topic: str, record: OutRecord, *, what: str) -> asyncio.Future[Any]:
        """Hand ``record`` to the producer; the future resolves once the broker has it."""
        producer = self.producer
        if producer is None:
            raise TransportError("kafka server is closed")
        if record.value is not None:
            self.options.check_size(record.value, what)
        return await produce(producer, topic, record, action=f"{what} to")

    async def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` if it does not exist (asked of the broker once per topic)."""
        if topic not in self._known_topics:
            await self.admin.ensure([check_topic(topic)])
            self._known_topics.add(topic)
