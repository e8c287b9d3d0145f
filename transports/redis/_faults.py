"""Fault injection for the fault suite (polybus.testing.injection): raw publishes, CLIENT KILL."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from polybus.testing.injection import Cut, FaultInjection

__all__ = ["RedisFaults"]


class RedisFaults(FaultInjection):
    greeting = b"PING\r\n"

    def answers(self, data: bytes) -> bool:
        return data.startswith(b"+PONG")

    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        redis = Redis.from_url(url)
        try:
            for payload in payloads:
                await redis.publish(route, payload)
        finally:
            await redis.aclose()

    async def prepare_cut(self, url: str, local_ports: Collection[int]) -> Cut | None:
        async def kill() -> None:
            admin = Redis.from_url(url)
            try:
                for port in local_ports:
                    with contextlib.suppress(Exception):
                        await admin.execute_command(  # type: ignore[no-untyped-call]
                            "CLIENT", "KILL", "ADDR", f"127.0.0.1:{port}"
                        )
            finally:
                await admin.aclose()

        return "redis CLIENT KILL ADDR", kill
