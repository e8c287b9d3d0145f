from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from polybus.abc import Features
from polybus.config import split_url
from polybus.errors import PolybusError
from polybus.plugins import TransportPlugin
from polybus.testing.injection import FaultInjection
from polybus.transports.memory import (
    FEATURES as MEMORY_FEATURES,
)
from polybus.transports.memory import (
    MemoryClientTransport,
    MemoryOptions,
    MemoryServerTransport,
    _bus,
)

FEATURES: Features = replace(MEMORY_FEATURES, name="loopback")


class LoopbackOptions(MemoryOptions):
    @classmethod
    def from_url(cls, url: str) -> LoopbackOptions:
        parts = split_url(url, ("loopback",))
        return cls(name=parts.netloc or parts.path.lstrip("/") or "default")


class LoopbackClientTransport(MemoryClientTransport):
    features = FEATURES


class LoopbackServerTransport(MemoryServerTransport):
    features = FEATURES


class LoopbackFaults(FaultInjection):
    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        name = LoopbackOptions.from_url(url).name
        for payload in payloads:
            server = _bus(name).pick()
            if server is None:
                return
            with contextlib.suppress(PolybusError):  # refused: what a peer sees
                await server._deliver(payload, None)


PLUGIN = TransportPlugin(
    LoopbackOptions,
    LoopbackClientTransport,
    LoopbackServerTransport,
    LoopbackFaults(),
)
