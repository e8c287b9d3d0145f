"""Fault injection for the fault suite (polybus.testing.injection): raw publishes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import nats

from polybus.testing.injection import FaultInjection

__all__ = ["NatsFaults"]


class NatsFaults(FaultInjection):
    def answers(self, data: bytes) -> bool:
        return data.startswith(b"INFO")

    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        nc = await nats.connect(url)
        try:
            for payload in payloads:
                await nc.publish(route, payload, reply=nc.new_inbox())
            await nc.flush()
        finally:
            await nc.close()
