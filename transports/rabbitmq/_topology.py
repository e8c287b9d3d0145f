"""What each side declares on its channel, as NestJS's ``setupChannel`` does (docs/PROTOCOL.md
§5.1, §5.5): the service queue, and with ``exchange``/``wildcards``/``fanout`` the exchange
and the queue's bindings to it. Declared through aio-pika's robust channel, which declares
them again on a new channel after a reconnect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._options import RabbitMQOptions

if TYPE_CHECKING:
    import aio_pika.abc

__all__ = ["declare_topology"]


async def declare_topology(
    channel: aio_pika.abc.AbstractRobustChannel,
    options: RabbitMQOptions,
    routes: Sequence[str] | None,
) -> None:
    """The client's topology (``routes`` is ``None``) or the server's, whose queue is bound
    with every handler route under ``wildcards``."""
    if routes is None and options.publishes_to_exchange:
        await _exchange(channel, options)  # the client publishes there: no queue of its own
        return
    if options.no_assert:
        queue = await channel.get_queue(options.queue, ensure=False)
    else:
        durable, exclusive, auto_delete, arguments = options.declare_arguments()
        queue = await channel.declare_queue(
            options.queue,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
    fanout = options.exchange_type == "fanout"
    if routes is None:
        if options.exchange and options.routing_key:
            await queue.bind(options.exchange, options.routing_key)
        return
    if not options.uses_exchange:
        return
    exchange = await _exchange(channel, options)
    if options.routing_key or fanout:
        await queue.bind(exchange, "" if fanout else options.routing_key)
    if options.wildcards:
        for route in routes:
            await queue.bind(exchange, route)


async def _exchange(
    channel: aio_pika.abc.AbstractRobustChannel, options: RabbitMQOptions
) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(
        options.exchange_name,
        options.exchange_type,
        durable=True,
        arguments=options.exchange_arguments or None,
    )
