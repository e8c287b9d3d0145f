"""What both halves share: the features, the connection with its callbacks, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient

from polybus.abc import Features
from polybus.errors import ConfigError, ErrorMap, ProtocolError, TransportError

from ._options import NatsOptions

__all__ = [
    "ERRORS",
    "FEATURES",
    "PUBLISH",
    "ConnectionCallbacks",
    "close_connection",
    "open_connection",
]

log = logging.getLogger("polybus.nats")

FEATURES = Features(
    name="nats",
    unknown_pattern="no_responders",
    unreadable_reply="fails_request",
    broadcast=True,
    queue_groups=True,
    headers=True,
    dead_letter=True,
    notes={
        "payload_1mib": "a 1 MiB payload plus its envelope exceeds the NATS server's default "
        "max_payload (1 MiB, raised only in the server's config file); "
        "tests/integration/test_nats.py checks fidelity up to that limit",
    },
)

ERRORS = ErrorMap(
    (nats_errors.MaxPayloadError, ProtocolError, "over the NATS server's max_payload"),
    (nats_errors.BadSubjectError, ConfigError, "not a valid NATS subject (no spaces; '.' splits)"),
    (nats_errors.BadHeaderError, ProtocolError, None),
    (nats_errors.OutboundBufferLimitError, TransportError, "disconnected, outgoing buffer full"),
    (
        (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError),
        TransportError,
        "the connection is closed",
    ),
    ((nats_errors.Error, OSError, asyncio.TimeoutError), TransportError, None),
)
"""nats-py's exceptions (and the socket's) as polybus's."""

PUBLISH = "NATS publish of %d bytes to %r"
"""What :data:`ERRORS` says of a failed publish (its size and subject)."""


class ConnectionCallbacks:
    """nats-py connection callbacks; subclasses report what they need."""

    _closing = False

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats_errors.SlowConsumerError):
            log.warning("NATS slow consumer on %r: message dropped", exc.subject)
        elif isinstance(exc, (OSError, asyncio.TimeoutError, nats_errors.StaleConnectionError)):
            log.debug("NATS connection error: %r", exc)
        elif not self._closing:
            log.warning("NATS error: %r", exc)

    async def _on_disconnected(self) -> None:
        pass

    async def _on_reconnected(self) -> None:
        pass

    async def _on_closed(self) -> None:
        pass


async def open_connection(options: NatsOptions, owner: ConnectionCallbacks) -> NatsClient:
    """Connect, failing fast when no server answers; reconnect forever afterwards."""
    nc = NatsClient()
    try:
        await nc.connect(
            servers=list(options.servers),
            error_cb=owner._on_error,
            disconnected_cb=owner._on_disconnected,
            reconnected_cb=owner._on_reconnected,
            closed_cb=owner._on_closed,
            name=options.name,
            allow_reconnect=True,
            connect_timeout=options.connect_timeout,  # type: ignore[arg-type]
            reconnect_time_wait=options.reconnect_time_wait,  # type: ignore[arg-type]
            # nats-py's first connect retries each server this many more times, then gives up
            max_reconnect_attempts=1,
            ping_interval=options.ping_interval,  # type: ignore[arg-type]
            max_outstanding_pings=options.max_outstanding_pings,
            flusher_queue_size=options.flusher_queue_size,
            no_echo=options.no_echo,
            tls=options.client_ssl(),
            tls_hostname=options.tls_hostname,
            user=options.user,
            password=options.password,
            token=options.token,
            user_credentials=options.creds_file,
            inbox_prefix=options.inbox_prefix,
            pending_size=options.pending_size,
        )
    except BaseException as exc:  # cancelled too: the socket may be open already
        owner._closing = True
        with contextlib.suppress(Exception):
            await nc.close()
        if not isinstance(exc, ERRORS.catches):
            raise
        cause = (
            nc.last_error if isinstance(exc, nats_errors.NoServersError) and nc.last_error else exc
        )
        raise ERRORS.error(cause, "cannot connect to NATS at %s", options.describe()) from exc
    # Once connected, reconnect as configured (forever by default; 0: never).
    nc.options["max_reconnect_attempts"] = options.max_reconnect_attempts
    if options.max_reconnect_attempts == 0:
        nc.options["allow_reconnect"] = False
    return nc


async def close_connection(nc: NatsClient | None) -> None:
    """Close ``nc`` unless it is closed already; errors are only logged (best effort)."""
    if nc is not None and not nc.is_closed:
        try:
            await nc.close()
        except (nats_errors.Error, OSError) as exc:  # pragma: no cover - best effort
            log.debug("error while closing the NATS connection: %r", exc)
