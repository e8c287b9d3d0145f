"""The orders service's HTTP API, calling billing through a named client (FastAPI).

    polybus run examples.billing:app --url tcp://127.0.0.1:3001 &
    POLYBUS_BILLING_URL=tcp://127.0.0.1:3001 uvicorn examples.orders_http:app --port 8000
    curl -X POST localhost:8000/orders/charge -H 'content-type: application/json' \\
         -d '{"orderId": "ord_42", "amount": 1999}'

``POST /orders/charge`` answers with billing's invoice; a billing error becomes the HTTP
status it asks for (502 otherwise), a billing that does not answer in time a 504, one that
cannot be reached a 503. Swap the transport by changing ``POLYBUS_BILLING_URL``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel

from polybus import ClientProxy, ClientRegistry, Microservice
from polybus.fastapi import inject, install_error_handlers, lifespan

CHARGE = {"cmd": "charge"}
"""billing's pattern (Kafka needs a string pattern: see :func:`build_app`)."""


class ChargeOrder(BaseModel):
    orderId: str  # the field names billing (and a NestJS client) use
    amount: int


Billing = Annotated[ClientProxy, inject("BILLING")]


def build_app(
    clients: ClientRegistry,
    *,
    charge_pattern: Any = CHARGE,
    serve: Iterable[Microservice] = (),
) -> FastAPI:
    """The orders API; ``serve`` runs microservices in the same process (a hybrid app)."""
    app = FastAPI(title="orders", lifespan=lifespan(clients, serve=serve))
    install_error_handlers(app)

    @app.post("/orders/charge")
    async def charge(order: ChargeOrder, billing: Billing) -> Any:
        invoice = await billing.send(charge_pattern, order.model_dump())
        await billing.emit("order_placed", {"orderId": order.orderId, "invoice": invoice["id"]})
        return invoice

    return app


clients = ClientRegistry()
clients.register("BILLING", "tcp://127.0.0.1:3001")  # overridden by $POLYBUS_BILLING_URL
app = build_app(clients)
