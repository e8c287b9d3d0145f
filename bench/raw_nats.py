"""Raw NATS ceiling on nats-py.

Server: a callback subscription per subject, ``msg.respond()``. Client: one wildcard inbox
subscription (``<inbox>.*``) whose callback resolves futures by the last subject token,
with ``publish(subject, body, reply=<inbox>.<id>)``: measured faster than ``nc.request()``
(which builds the same muxed inbox but adds a nuid token, a timeout wrapper and a
``Msg`` check per call). ``BENCH_NATS_REQUEST=1`` switches the client to ``nc.request()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .common import Config

dumps = orjson.dumps
loads = orjson.loads
USE_REQUEST = os.environ.get("BENCH_NATS_REQUEST") == "1"


@contextlib.asynccontextmanager
async def serve(cfg: Config, on_event: Callable[[], None]) -> AsyncIterator[None]:
    nc = await nats.connect(cfg.nats_url)

    async def handle(msg: Msg) -> None:
        data = loads(msg.data)
        await msg.respond(dumps({"response": sum(data["data"]["a"]), "isDisposed": True}))

    async def count(msg: Msg) -> None:
        on_event()

    await nc.subscribe(cfg.rpc, cb=handle)
    await nc.subscribe(cfg.event, cb=count)
    await nc.flush()
    try:
        yield
    finally:
        await nc.close()


class Client:
    def __init__(self, nc: NatsClient, cfg: Config) -> None:
        self._nc = nc
        self._rpc = cfg.rpc
        self._event = cfg.event
        self._inbox = nc.new_inbox()
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._next = 0
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        pending = self._pending
        start = len(self._inbox) + 1

        async def on_reply(msg: Msg) -> None:
            fut = pending.pop(msg.subject[start:].encode(), None)
            if fut is not None and not fut.done():
                fut.set_result(loads(msg.data).get("response"))

        await self._nc.subscribe(f"{self._inbox}.*", cb=on_reply)
        await self._nc.flush()

    async def call(self, data: Any) -> Any:
        body = dumps({"pattern": self._rpc, "data": data})
        if USE_REQUEST:
            msg = await self._nc.request(self._rpc, body, timeout=30)
            return loads(msg.data).get("response")
        self._next += 1
        token = b"%x" % self._next
        fut = self._pending[token] = self._loop.create_future()
        await self._nc.publish(self._rpc, body, reply=f"{self._inbox}.{token.decode()}")
        return await fut

    async def emit(self, data: Any) -> None:
        await self._nc.publish(self._event, dumps({"pattern": self._event, "data": data}))

    async def close(self) -> None:
        await self._nc.close()


async def connect(cfg: Config) -> Client:
    client = Client(await nats.connect(cfg.nats_url), cfg)
    await client.start()
    return client
