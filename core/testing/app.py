"""The service the conformance suite talks to.

``build_app(prefix)`` registers every handler the cases call, under routes made from
``prefix`` so that each test has its own channels, subjects and topics. The module-level
``app`` (prefix ``"conformance"``) is what ``polybus run polybus.testing.app:app --url URL``
serves for ``polybus conformance URL --external``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ..abc import Context
from ..errors import RpcException
from ..middleware import HandleNext, Inbound, ServerMiddleware
from ..server import Microservice

__all__ = ["DEFAULT_PREFIX", "Charge", "Guard", "MapErrors", "Routes", "app", "build_app"]

DEFAULT_PREFIX = "conformance"


@dataclass(frozen=True)
class Routes:
    """Every pattern of the conformance service, for one prefix."""

    prefix: str
    object_patterns: bool = True

    def _p(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    @property
    def sum(self) -> Any:
        """An object pattern where the transport has them (Kafka: a string)."""
        if self.object_patterns:
            return {"cmd": self._p("sum"), "role": "math"}
        return self._p("sum")

    @property
    def sum_reordered(self) -> Any:
        if self.object_patterns:
            return {"role": "math", "cmd": self._p("sum")}
        return self._p("sum")

    echo = property(lambda self: self._p("echo"))
    stream = property(lambda self: self._p("stream"))
    fail_object = property(lambda self: self._p("fail_object"))
    fail_string = property(lambda self: self._p("fail_string"))
    crash = property(lambda self: self._p("crash"))
    slow = property(lambda self: self._p("slow"))
    charge = property(lambda self: self._p("charge"))
    count = property(lambda self: self._p("count"))
    whoami = property(lambda self: self._p("whoami"))
    headers = property(lambda self: self._p("headers"))
    event = property(lambda self: self._p("event"))
    slow_event = property(lambda self: self._p("slow_event"))
    events = property(lambda self: self._p("events"))
    guarded = property(lambda self: self._p("guarded"))
    mapped = property(lambda self: self._p("mapped"))
    unknown = property(lambda self: self._p("no_such_handler"))


class Charge(BaseModel):
    order_id: str
    amount: int


class Guard(ServerMiddleware):
    """Rejects a call before its handler unless the data holds the ticket (a NestJS guard)."""

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        if not isinstance(message.data, dict) or message.data.get("ticket") != "open":
            raise RpcException({"status": "error", "message": "Forbidden"})
        return await call_next(message)


class MapErrors(ServerMiddleware):
    """Turns a handler's ``LookupError`` into the caller's error (a NestJS exception filter)."""

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        try:
            return await call_next(message)
        except LookupError as exc:
            raise RpcException({"status": "error", "message": f"not found: {exc}"}) from exc


# What event and count handlers saw, per test token: shared by every instance in a process.
RECEIVED: defaultdict[str, list[Any]] = defaultdict(list)
COUNTS: defaultdict[str, int] = defaultdict(int)


def build_app(
    target: Any = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    object_patterns: bool = True,
    instance: str = "a",
    **options: Any,
) -> Microservice:
    routes = Routes(prefix, object_patterns)
    app = Microservice(target, name=f"conformance-{instance}", **options)
    handled: defaultdict[str, int] = defaultdict(int)

    @app.message_pattern(routes.sum)
    def total(numbers: list[float]) -> float:
        return sum(numbers)

    @app.message_pattern(routes.echo)
    async def echo(data: Any) -> Any:
        return data

    @app.message_pattern(routes.stream)
    async def stream(count: int) -> AsyncIterator[int]:
        for i in range(1, count + 1):
            await asyncio.sleep(0.001)
            yield i

    @app.message_pattern(routes.fail_object)
    def fail_object(data: Any) -> None:
        raise RpcException({"code": "E_TEST", "message": "boom"})

    @app.message_pattern(routes.fail_string)
    def fail_string(data: Any) -> None:
        raise RpcException("boom")

    @app.message_pattern(routes.crash)
    def crash(data: Any) -> None:
        raise ValueError("a bug in the handler")

    @app.message_pattern(routes.slow)
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "late"

    @app.message_pattern(routes.charge)
    async def charge(data: Charge) -> dict[str, Any]:
        return {"id": f"inv_{data.order_id}", "amount": data.amount, "status": "paid"}

    @app.message_pattern(routes.count)
    def count(token: str) -> int:
        COUNTS[token] += 1
        return COUNTS[token]

    @app.message_pattern(routes.whoami)
    def whoami(token: str) -> str:
        handled[token] += 1
        RECEIVED[f"whoami:{token}"].append(instance)
        return instance

    @app.message_pattern(routes.headers)
    def headers(data: Any, ctx: Context) -> dict[str, str]:
        return {k: v for k, v in (ctx.headers or {}).items() if k.startswith("x-test")}

    @app.event_pattern(routes.event)
    async def first(data: dict[str, Any]) -> None:
        RECEIVED[data["token"]].append(["first", instance, data])

    @app.event_pattern(routes.event)
    def second(data: dict[str, Any]) -> None:
        RECEIVED[data["token"]].append(["second", instance, data])

    @app.event_pattern(routes.slow_event)
    async def slow_event(data: dict[str, Any]) -> None:
        RECEIVED[data["token"]].append(["started", instance, data])
        await asyncio.sleep(data["seconds"])
        RECEIVED[data["token"]].append(["finished", instance, data])

    @app.message_pattern(routes.events)
    def events(key: str) -> list[Any]:
        return RECEIVED.get(key, [])

    @app.message_pattern(routes.guarded, middleware=[Guard()])
    def guarded(data: dict[str, Any]) -> str:
        COUNTS[f"guarded:{data['token']}"] += 1
        return "let in"

    @app.message_pattern(routes.mapped, middleware=[MapErrors()])
    def mapped(name: str) -> None:
        raise KeyError(name)

    return app


app = build_app()
