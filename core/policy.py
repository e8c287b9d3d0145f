"""What a service does with an event whose handler failed: retry, dead-letter or drop.

::

    app = Microservice(url, on_failure=FailurePolicy(retries=3, dead_letter="orders.dlq"))

    @app.event_pattern("order_placed", on_failure=FailurePolicy(retries=5, backoff=0.5))
    async def placed(order: dict) -> None: ...

A failed handler is run again ``retries`` times, ``backoff`` seconds after the first
failure and twice as long after each next one (at most ``max_backoff``). If it still fails,
the event goes to ``dead_letter`` (a queue, topic, subject or channel: the transport must
declare ``Features.dead_letter``) and is then settled as handled; without ``dead_letter``
it is rejected with an ERROR log: what a rejected message becomes is the transport's (see
the README's guarantees table; RabbitMQ dead-letters it broker-side when the queue has a
dead-letter exchange). The default policy is ``FailurePolicy()``: no retry, reject.

Requests are not retried: their caller gets the error reply and decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["DEFAULT_POLICY", "FailurePolicy"]


@dataclass(frozen=True)
class FailurePolicy:
    """How an event whose handler raised is retried and where it goes after the last try."""

    retries: int = 0
    backoff: float = 0.1
    max_backoff: float = 5.0
    dead_letter: str | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError("FailurePolicy.retries must be 0 or more")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError("FailurePolicy backoffs must be 0 or more")
        if self.dead_letter is not None and not self.dead_letter:
            raise ConfigError("FailurePolicy.dead_letter must name a destination")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


DEFAULT_POLICY = FailurePolicy()
