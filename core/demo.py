"""The orders/billing example behind ``polybus demo``: the same code on every transport.

A billing microservice answers ``{"cmd": "charge"}`` with an invoice and listens to
``order_placed`` events; an orders client charges ``ord_42`` for 1999 and emits
``order_placed``. Only the URL changes between transports.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel

from .config import features_of
from .errors import ConfigError
from .registry import create_client
from .server import Microservice

__all__ = ["DEFAULT_URL", "run_demo"]

DEFAULT_URL = "tcp://127.0.0.1:0"


class ChargeRequest(BaseModel):
    orderId: str
    amount: int


class Invoice(BaseModel):
    id: str
    amount: int
    status: str


def _service_url(url: str) -> str:
    """Name the billing service where the transport needs one (``Features.isolation_option``:
    RabbitMQ's queue, Kafka's group) and the URL names none."""
    option = features_of(url).isolation_option
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if option is None or option in query:
        return url
    query[option] = "polybus-demo-billing"
    return urlunsplit(parts._replace(query=urlencode(query)))


def build_billing(url: str, charge_pattern: Any, placed: asyncio.Event) -> Microservice:
    billing = Microservice(url, name="billing")

    @billing.message_pattern(charge_pattern)
    async def charge(request: ChargeRequest) -> Invoice:
        return Invoice(id=f"inv_{uuid.uuid4().hex[:8]}", amount=request.amount, status="paid")

    @billing.event_pattern("order_placed")
    async def order_placed(event: dict[str, Any]) -> None:
        placed.set()

    return billing


async def run_demo(url: str = DEFAULT_URL) -> dict[str, Any]:
    """Start billing, charge an order from an orders client, return the invoice."""
    url = _service_url(url)
    object_patterns = features_of(url).object_patterns
    charge_pattern: Any = {"cmd": "charge"} if object_patterns else "billing.charge"
    placed = asyncio.Event()
    billing = build_billing(url, charge_pattern, placed)
    await billing.listen()
    client_url = url
    port = getattr(billing.transport, "port", None)
    if isinstance(port, int):
        parts = urlsplit(url)
        client_url = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
    try:
        async with create_client(client_url, timeout=30) as orders:
            invoice: dict[str, Any] = await orders.send(
                charge_pattern, {"orderId": "ord_42", "amount": 1999}
            )
            await orders.emit("order_placed", {"orderId": "ord_42", "invoice": invoice["id"]})
            try:
                await asyncio.wait_for(placed.wait(), 30)
            except asyncio.TimeoutError:
                raise ConfigError("billing never received order_placed") from None
    finally:
        await billing.close()
    return invoice
