"""Raw MQTT ceiling on aiomqtt (paho-mqtt), the library polybus's MQTT transport uses.

NestJS's wire format: requests are published at QoS 0 on the route topic with an ``id``;
the server publishes the reply on ``<topic>/reply``, to which the client subscribed once
(before its first request). Events are QoS 0 publishes on the event topic. Each side holds
one connection. QoS 0 publishes go straight to paho (``client._client.publish``), which
writes them with the loop iteration's output: aiomqtt's own ``publish`` waits for that
write and costs about a third more CPU per message (the fastest form found).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson

from .common import Config

dumps = orjson.dumps
loads = orjson.loads


def new_client(cfg: Config) -> aiomqtt.Client:
    url = urlsplit(cfg.mqtt_url)
    client = aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or 1883,
        identifier=f"raw-{uuid.uuid4().hex[:12]}",
    )
    client.pending_calls_threshold = 1 << 30  # no warning per publish under load
    return client


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    rpc, event = cfg.rpc, cfg.event
    reply_topic = f"{rpc}/reply"
    async with new_client(cfg) as client:
        await client.subscribe([(rpc, 0), (event, 0)])

        async def loop() -> None:
            async for message in client.messages:
                if message.topic.value == event:
                    on_event()
                    continue
                msg = loads(message.payload)  # type: ignore[arg-type]
                reply = {"response": sum(msg["data"]["a"]), "isDisposed": True, "id": msg["id"]}
                client._client.publish(reply_topic, dumps(reply))

        task = asyncio.get_running_loop().create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Client:
    def __init__(self, cfg: Config, client: aiomqtt.Client) -> None:
        self._rpc = cfg.rpc
        self._event = cfg.event
        self._client = client
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._next = 0
        self._prefix = uuid.uuid4().hex[:8]
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._replies())

    async def _replies(self) -> None:
        pending = self._pending
        async for message in self._client.messages:
            msg = loads(message.payload)  # type: ignore[arg-type]
            fut = pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg.get("response"))

    async def call(self, data: Any) -> Any:
        self._next += 1
        rid = f"{self._prefix}{self._next:x}"
        fut = self._pending[rid] = self._loop.create_future()
        body = dumps({"pattern": self._rpc, "data": data, "id": rid})
        self._client._client.publish(self._rpc, body)
        return await fut

    async def emit(self, data: Any) -> None:
        self._client._client.publish(self._event, dumps({"pattern": self._event, "data": data}))
        await asyncio.sleep(0)  # let the loop write it (an emitter must not starve the loop)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._client.__aexit__(None, None, None)


async def connect(cfg: Config) -> Client:
    client = new_client(cfg)
    await client.__aenter__()
    await client.subscribe(f"{cfg.rpc}/reply")
    return Client(cfg, client)
