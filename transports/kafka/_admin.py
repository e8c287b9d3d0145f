"""Topics: created with the admin API ahead of use (never by broker auto-creation)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from polybus.errors import TransportError

from ._common import ERRORS, close_quietly, log
from ._options import KafkaOptions

__all__ = ["TopicAdmin"]


class TopicAdmin:
    """Creates topics with the admin API (never relying on broker auto-creation) and
    reads partition counts. One lazily started ``AIOKafkaAdminClient`` per transport."""

    def __init__(self, options: KafkaOptions, role: str) -> None:
        self._options = options
        self._role = role
        self._admin: Any = None
        self._starting: asyncio.Lock | None = None
        self._replication: int | None = options.replication_factor
        self.created: set[str] = set()

    async def _client(self) -> Any:
        if self._admin is not None:
            return self._admin
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**self._options.client_kwargs(self._role))
                try:
                    with ERRORS("kafka: cannot connect to %s", self._options.describe()):
                        await admin.start()
                except Exception:
                    await close_quietly(admin.close())
                    raise
                self._admin = admin
        return self._admin

    async def _replication_factor(self, admin: Any) -> int:
        if self._replication is None:
            try:
                cluster = await admin.describe_cluster()
                brokers = len(cluster.get("brokers") or ()) or 1
            except Exception:
                brokers = 1
            self._replication = min(3, brokers)
        return self._replication

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create those of ``topics`` that do not exist (existing ones are left alone)."""
        names = list(dict.fromkeys(topics))
        if not names or not self._options.create_topics:
            return
        admin = await self._client()
        options = self._options
        replication = await self._replication_factor(admin)
        config = dict(options.topic_config or {})
        new = [
            NewTopic(name, options.num_partitions, replication, topic_configs=config)
            for name in names
        ]
        with ERRORS(f"kafka: cannot create topics {names}"):
            response = await admin.create_topics(new, timeout_ms=options.request_timeout_ms)
        for item in getattr(response, "topic_errors", ()):
            name, code = item[0], item[1]
            if code == 0:
                self.created.add(name)
            elif code == 36:  # TOPIC_ALREADY_EXISTS
                pass
            elif code in (29, 31):  # not authorized: the topic may exist anyway
                log.debug("kafka: not authorized to create topic %s", name)
            else:
                message = item[2] if len(item) > 2 else ""
                raise TransportError(
                    f"kafka: cannot create topic {name!r}: error {code} {message or ''}"
                )

    async def partitions(self, topic: str) -> list[int]:
        """Partition ids of an existing ``topic`` (after :meth:`ensure`)."""
        admin = await self._client()
        for attempt in range(50):
            with ERRORS(f"kafka: cannot describe topic {topic!r}"):
                described = await admin.describe_topics([topic])
            for item in described:
                if item.get("topic") == topic and item.get("error_code", 0) == 0:
                    ids = sorted(p["partition"] for p in item.get("partitions") or ())
                    if ids:
                        return ids
            await asyncio.sleep(min(0.01 * (attempt + 1), 0.2))
        raise TransportError(f"kafka: topic {topic!r} has no partitions")

    async def delete(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        admin = await self._client()
        with ERRORS(f"kafka: cannot delete topics {names}"):
            await admin.delete_topics(names, timeout_ms=self._options.request_timeout_ms)

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await close_quietly(admin.close())
