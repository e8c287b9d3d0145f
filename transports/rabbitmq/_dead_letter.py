"""Dead-lettering a message from the client side (``RabbitMQContext.dead_letter``): the original
body and properties, plus the why and where-from headers, to a durable queue, confirmed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polybus.errors import describe_error
from polybus.packets import DEAD_LETTER_ERROR, DEAD_LETTER_ORIGIN

from ._common import ERRORS

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic

    from ._link import Link

__all__ = ["dead_letter", "dead_letter_properties"]

_NOT_COPIED = frozenset({"cluster_id", "user_id"})
"""Properties a re-publish must not carry: ``cluster_id`` is deprecated (RabbitMQ refuses
it) and ``user_id`` must name the publishing user, which need not be the original one."""


def dead_letter_properties(
    original: Basic.Properties, origin: str, error: BaseException
) -> Basic.Properties:
    from pamqp.commands import Basic

    copied: dict[str, Any] = {
        name: getattr(original, name)
        for name in original.attributes()
        if name not in _NOT_COPIED and getattr(original, name) is not None
    }
    headers = dict(copied.get("headers") or {})
    headers[DEAD_LETTER_ERROR] = describe_error(error)
    headers[DEAD_LETTER_ORIGIN] = origin
    copied["headers"] = headers
    return Basic.Properties(**copied)


async def dead_letter(
    link: Link, delivered: DeliveredMessage, origin: str, destination: str, error: BaseException
) -> None:
    """Publish ``delivered`` to the queue ``destination`` (declared durable if missing) and
    return once the broker confirmed it; ``TransportError`` when it could not."""
    props = dead_letter_properties(delivered.header.properties, origin, error)
    with ERRORS("RabbitMQ dead-lettering to queue %r failed", destination):
        await link.publish_to_queue(destination, delivered.body, props)
