"""Fault injection for the fault suite (polybus.testing.injection): raw publishes to the
service queue, ``rabbitmqctl close_connection``, the queue's depth."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import aio_pika

from polybus.testing.injection import Cut, FaultInjection

__all__ = ["RabbitMQFaults"]


class RabbitMQFaults(FaultInjection):
    greeting = b"AMQP\x00\x00\x09\x01"

    def answers(self, data: bytes) -> bool:
        return data[:1] == b"\x01"  # a Connection.Start method frame

    async def inject(
        self, url: str, route: str, payloads: Sequence[bytes], options: Mapping[str, Any]
    ) -> None:
        connection = await aio_pika.connect(url.split("?", 1)[0])
        try:
            channel = await connection.channel()
            for payload in payloads:
                message = aio_pika.Message(
                    payload,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    correlation_id=uuid.uuid4().hex,
                )
                await channel.default_exchange.publish(message, routing_key=options["queue"])
        finally:
            await connection.close()

    async def prepare_cut(self, url: str, local_ports: Collection[int]) -> Cut | None:
        code, out = await _run("rabbitmqctl", "-q", "list_connections", "pid", "peer_port")
        pids = [
            fields[0]
            for fields in (line.split() for line in out.splitlines())
            if len(fields) == 2 and fields[1].isdigit() and int(fields[1]) in local_ports
        ]
        if code != 0 or not pids:
            return None

        async def close() -> None:
            await asyncio.gather(
                *(
                    _run("rabbitmqctl", "close_connection", pid, "polybus fault test")
                    for pid in pids
                )
            )

        return "rabbitmqctl close_connection", close

    async def queue_depth(self, url: str, options: Mapping[str, Any]) -> int | None:
        connection = await aio_pika.connect(url.split("?", 1)[0])
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(options["queue"], passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await connection.close()


async def _run(*command: str, timeout: float = 30.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, ""
    return proc.returncode or 0, out.decode(errors="replace")
