"""An orders service calling billing through a named client, as ``ClientsModule`` does.

    polybus run examples.billing:app --url tcp://127.0.0.1:3001 &
    POLYBUS_BILLING_URL=tcp://127.0.0.1:3001 python -m examples.orders

Swap the transport by changing ``POLYBUS_BILLING_URL``; the code stays the same.
"""

from __future__ import annotations

import asyncio

from polybus import ClientRegistry

clients = ClientRegistry()
clients.register("BILLING", "tcp://127.0.0.1:3001")  # overridden by $POLYBUS_BILLING_URL


async def main() -> None:
    async with clients:  # connects every client at startup, closes them at shutdown
        billing = clients.get("BILLING")
        invoice = await billing.send({"cmd": "charge"}, {"orderId": "ord_42", "amount": 1999})
        await billing.emit("order_placed", {"orderId": "ord_42", "invoice": invoice["id"]})
        print(invoice)


if __name__ == "__main__":
    asyncio.run(main())
