"""Fault injection for the fault suite (polybus.testing.injection): raw publishes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiomqtt

from polybus.testing.injection import FaultInjection

from ._options import MqttOptions

__all__ = ["MqttFaults"]


class MqttFaults(FaultInjection):
    greeting = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x05\x00\x00"  # CONNECT, 3.1.1
    """An anonymous CONNECT: the broker answers with a CONNACK."""

    def answers(self, data: bytes) -> bool:
        return data[:1] == b"\x20"

    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        parsed = MqttOptions.from_url(url)
        async with aiomqtt.Client(
            parsed.host,
            parsed.port,
            username=parsed.username,
            password=parsed.password,
        ) as client:
            for payload in payloads:
                await client.publish(route, payload, qos=1)
