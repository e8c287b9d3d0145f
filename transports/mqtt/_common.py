"""What both halves share: the features, and :class:`Link`, one MQTT connection that is
rebuilt with backoff when it drops and whose subscriptions are restored each time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS, error_string
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from polybus.abc import ConnectionStatus, Features
from polybus.errors import ErrorMap, PolybusError, TransportError

from ._options import MqttOptions

__all__ = ["ERRORS", "FEATURES", "Link", "publish_properties", "user_properties"]

log = logging.getLogger("polybus.mqtt")

FEATURES = Features(
    name="mqtt",
    unknown_pattern="timeout",
    broadcast=True,
    queue_groups=True,
    headers=True,
    notes={
        "headers": "MQTT 5 user properties; with MQTT 3.1.1 (the default) NestJS v12 metadata",
    },
)

ERRORS = ErrorMap((aiomqtt.MqttError, TransportError, None))
"""aiomqtt's exceptions as polybus's."""

_PROTOCOLS = {
    3: aiomqtt.ProtocolVersion.V31,
    4: aiomqtt.ProtocolVersion.V311,
    5: aiomqtt.ProtocolVersion.V5,
}

MessageHandler = Callable[[aiomqtt.Message], Awaitable[None] | None]
Restore = Callable[[aiomqtt.Client], Awaitable[None]]


def publish_properties(options: MqttOptions, headers: dict[str, str] | None) -> Properties | None:
    """MQTT 5 PUBLISH properties carrying ``options.user_properties`` and ``headers``."""
    if options.protocol_version != 5:
        return None
    merged = {**(options.user_properties or {}), **(headers or {})}
    if not merged:
        return None
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = list(merged.items())
    return properties


def user_properties(message: aiomqtt.Message) -> dict[str, str] | None:
    """The MQTT 5 user properties of ``message`` as headers (``None`` when it has none)."""
    properties = message.properties
    pairs = getattr(properties, "UserProperty", None) if properties is not None else None
    return dict(pairs) if pairs else None


def _new_client(options: MqttOptions, manual_ack: bool) -> aiomqtt.Client:
    v5 = options.protocol_version == 5
    connect_properties = None
    if v5 and options.session_expiry is not None:
        connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_properties.SessionExpiryInterval = options.session_expiry
    client = aiomqtt.Client(
        options.host,
        options.port,
        username=options.username,
        password=options.password,
        identifier=options.client_id,
        protocol=_PROTOCOLS[options.protocol_version],
        clean_session=None if v5 else options.clean_session,
        clean_start=options.clean_session if v5 else 3,
        keepalive=options.keepalive,
        timeout=options.connect_timeout,
        tls_context=options.client_ssl(),
        properties=connect_properties,
        logger=log,
    )
    # aiomqtt warns on every publish while more than 10 are pending: normal under load
    client.pending_calls_threshold = 1 << 30
    client._client.manual_ack_set(manual_ack)
    return client


class Link:
    """One MQTT connection. ``session`` counts connections: a subscription confirmed in
    an earlier session must be made again (``restore`` does it on each reconnection,
    before messages are read or anything is published)."""

    def __init__(
        self,
        options: MqttOptions,
        on_message: MessageHandler,
        restore: Restore,
        on_lost: Callable[[PolybusError], None] | None = None,
        on_status: Callable[[ConnectionStatus], None] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.options = options
        self._manual_ack = manual_ack
        self.session = 0
        self.client: aiomqtt.Client | None = None
        self._on_message = on_message
        self._restore = restore
        self._on_lost = on_lost
        self._on_status = on_status or (lambda status: None)
        self._up = asyncio.Event()
        self._down: asyncio.Future[None] | None = None  # set when this session's connection drops
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def up(self) -> bool:
        return self.client is not None

    async def connect(self) -> None:
        """Connect once; ``TransportError`` when the broker cannot be reached."""
        self._on_status(ConnectionStatus.CONNECTING)
        client = await self._open()
        self._task = asyncio.get_running_loop().create_task(self._run(client))

    async def _open(self) -> aiomqtt.Client:
        client = _new_client(self.options, self._manual_ack)
        # aiomqtt connects in an executor thread that a cancel cannot stop: a cancelled
        # connect lets it end, then disconnects, so no socket or task stays behind.
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            with ERRORS("cannot connect to MQTT at %s", self.options.address):
                await asyncio.shield(entering)
        except asyncio.CancelledError:
            await asyncio.wait([entering])
            if not entering.cancelled() and entering.exception() is None:
                await _drop(client)
            raise
        self.session += 1
        try:
            await self._restore(client)
        except BaseException:
            await _drop(client)
            raise
        self._down = asyncio.get_running_loop().create_future()
        self.client = client
        self._up.set()
        self._on_status(ConnectionStatus.CONNECTED)
        return client

    async def _run(self, client: aiomqtt.Client) -> None:
        while True:
            try:
                async for message in client.messages:
                    try:
                        pending = self._on_message(message)
                        if pending is not None:
                            await pending
                    except Exception:  # a failing handler must not stop the reading
                        log.exception("MQTT message handler failed")
                error: BaseException = TransportError("the message stream ended")
            except aiomqtt.MqttError as exc:
                error = exc
            self.client = None
            self._up.clear()
            if self._down is not None and not self._down.done():
                self._down.set_result(None)
            if self._closing:
                return
            await _drop(client)
            lost = ERRORS.error(error, "MQTT connection to %s lost", self.options.address)
            log.warning("%s; reconnecting", lost)
            self._on_status(ConnectionStatus.DISCONNECTED)
            if self._on_lost is not None:
                self._on_lost(lost)
            self._on_status(ConnectionStatus.RECONNECTING)
            reconnected = await self._reconnect()
            if reconnected is None:  # gave up: whoever waits for a connection fails now
                self._closing = True
                self._up.set()
                self._on_status(ConnectionStatus.CLOSED)
                return
            client = reconnected

    async def _reconnect(self) -> aiomqtt.Client | None:
        options = self.options
        delay = options.retry_delay
        attempts = 0
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                return await self._open()
            except (TransportError, aiomqtt.MqttError) as exc:
                attempts += 1
                log.debug("MQTT reconnect attempt %d failed: %s", attempts, exc)
                if options.retry_attempts is not None and attempts >= options.retry_attempts:
                    log.error(
                        "giving up on MQTT at %s after %d attempts", options.address, attempts
                    )
                    return None
                delay = min(delay * 2, options.max_retry_delay)
        return None

    async def wait_up(self, timeout: float | None = None) -> aiomqtt.Client:
        """The connected client, waiting up to ``timeout`` seconds for a reconnection."""
        client = self.client
        if client is not None:
            return client
        if self._closing:
            raise TransportError("MQTT connection is closed")
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError:
            raise TransportError(
                f"MQTT broker at {self.options.address} unreachable (reconnecting)"
            ) from None
        return await self.wait_up(0)

    async def publish(
        self,
        topic: str,
        body: bytes,
        qos: int,
        properties: Properties | None = None,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish; returns once handed to the connection (QoS 0) or acknowledged by the
        broker (QoS 1/2)."""
        client = self.client or await self.wait_up(timeout)
        if qos == 0:
            # No acknowledgement to wait for: paho writes the packet with this loop
            # iteration's output. (aiomqtt's publish would wait for that write, for ever if
            # the connection dropped first, and costs a third of the transport's CPU.)
            info = client._client.publish(topic, body, 0, retain, properties)
            if info.rc != MQTT_ERR_SUCCESS:
                raise TransportError(f"MQTT publish to {topic!r} failed: {error_string(info.rc)}")
            return
        down = self._down
        sent = asyncio.ensure_future(
            client.publish(topic, body, qos, retain, properties, timeout=math.inf)
        )
        waits: tuple[asyncio.Future[None], ...] = (sent,) if down is None else (sent, down)
        try:
            # aiomqtt waits for the PUBACK forever: a lost connection must end the wait
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            sent.cancel()
            raise
        if not sent.done():
            sent.cancel()
            raise TransportError(f"MQTT connection lost while publishing to {topic!r}")
        exc = sent.exception()
        if exc is not None:
            raise ERRORS.error(exc, "MQTT publish to %r failed", topic) from exc

    def ack(self, message: aiomqtt.Message, session: int) -> None:
        """With ``manual_ack``: acknowledge a QoS 1/2 message received in ``session``. One
        received before a reconnection is not acknowledged: the broker sends it again
        (persistent sessions) or has forgotten it."""
        client = self.client
        if message.qos and client is not None and session == self.session:
            client._client.ack(message.mid, message.qos)

    async def subscribe(self, client: aiomqtt.Client, topics: Sequence[tuple[str, int]]) -> None:
        """Subscribe and wait for the SUBACK; ``TransportError`` when refused."""
        if not topics:
            return
        with ERRORS("MQTT subscribe failed"):
            codes = await client.subscribe(list(topics))
        refused = [
            topic for (topic, _), code in zip(topics, codes, strict=False) if _code(code) >= 0x80
        ]
        if refused:
            raise TransportError(f"MQTT broker refused the subscriptions {refused}")

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        client = self.client
        if client is None or not topics:
            return
        try:
            await client.unsubscribe(list(topics))
        except aiomqtt.MqttError as exc:
            log.debug("MQTT unsubscribe failed: %r", exc)

    async def close(self) -> None:
        self._closing = True
        client, self.client = self.client, None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if client is not None:
            await _drop(client)
        self._on_status(ConnectionStatus.CLOSED)


def _code(code: object) -> int:
    value = getattr(code, "value", code)
    return value if isinstance(value, int) else 0


async def _drop(client: aiomqtt.Client) -> None:
    """Disconnect ``client`` (best effort: it may be dead already)."""
    try:
        await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)
    except (aiomqtt.MqttError, asyncio.TimeoutError, OSError) as exc:
        log.debug("MQTT disconnect: %r", exc)
