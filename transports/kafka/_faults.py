"""Fault injection for the fault suite (polybus.testing.injection): raw records."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from polybus.testing.injection import FaultInjection

__all__ = ["KafkaFaults"]

_CLIENT_ID = b"polybus-faults"
_METADATA_V0 = struct.pack(">hhih", 3, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID + struct.pack(">i", 0)


class KafkaFaults(FaultInjection):
    greeting = struct.pack(">i", len(_METADATA_V0)) + _METADATA_V0

    def answers(self, data: bytes) -> bool:
        return len(data) >= 8 and data[4:8] == b"\0\0\0\x01"  # our correlation id

    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
        producer = AIOKafkaProducer(bootstrap_servers=netloc.split(","))
        await producer.start()
        try:
            for payload in payloads:
                await producer.send_and_wait(route, payload)
        finally:
            await producer.stop()
