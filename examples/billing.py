"""A billing microservice: ``polybus run examples.billing:app --url tcp://127.0.0.1:3001``.

The same module serves over any transport: only the URL changes
(``redis://127.0.0.1:6379``, ``nats://127.0.0.1:4222``,
``amqp://guest:guest@127.0.0.1:5672/?queue=billing``). A NestJS ``ClientProxy`` can call it.
"""

from __future__ import annotations

import logging
import uuid

from pydantic import BaseModel

from polybus import Context, Microservice, RpcException

log = logging.getLogger("billing")

app = Microservice(name="billing")  # transport from --url / $POLYBUS_URL


class ChargeRequest(BaseModel):
    orderId: str  # the field name the NestJS side uses
    amount: int


class Invoice(BaseModel):
    id: str
    amount: int
    status: str


@app.message_pattern({"cmd": "charge"})
async def charge(request: ChargeRequest) -> Invoice:
    if request.amount <= 0:
        raise RpcException({"code": "E_AMOUNT", "message": "amount must be positive"})
    return Invoice(id=f"inv_{uuid.uuid4().hex[:8]}", amount=request.amount, status="paid")


@app.event_pattern("order_placed")
async def order_placed(event: dict[str, object], ctx: Context) -> None:
    log.info("order placed: %s (via %s)", event, ctx.transport_name)
