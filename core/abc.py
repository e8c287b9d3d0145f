"""The two adapter contracts. A transport adapter implements these and nothing more.

Everything else — correlation of replies, timeouts, serialization choices, routing by
pattern, streaming, error shapes — lives in core. An adapter owns only its broker's own
request-reply mechanics (docs/PROTOCOL.md per transport) and maps its client library's errors
to :class:`polybus.errors.TransportError` at its boundary.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .errors import short_repr
from .packets import MISSING, Event, Reply, Request, encode_reply, parse_deadline

if TYPE_CHECKING:
    from .config import TransportOptions
    from .serializers import Serializer

__all__ = [
    "ClientTransport",
    "ConnectionReporter",
    "ConnectionStatus",
    "Context",
    "Features",
    "MessageSink",
    "PublishedReplyContext",
    "Release",
    "ReplyPublisher",
    "ReplySink",
    "ReportsConnection",
    "RouteSpec",
    "ServerStatus",
    "ServerTransport",
    "SupportsCleanup",
    "no_release",
]


class ConnectionStatus(str, enum.Enum):
    """Connection state of a client or server, as NestJS's ``status`` stream reports it."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class ServerStatus(str, enum.Enum):
    """Lifecycle state of a :class:`polybus.Microservice` (``app.status``)."""

    STARTING = "starting"
    """``listen()`` is running: startup hooks, then the transport's subscriptions."""
    LISTENING = "listening"
    """Receiving messages."""
    RECONNECTING = "reconnecting"
    """The transport lost its broker connection and is restoring it: nothing is received."""
    FAILED = "failed"
    """The transport gave up restoring its broker connection (a bounded reconnect, such as
    MQTT's ``retry_attempts``): nothing is received. ``run()`` then closes the service and
    raises :class:`~polybus.errors.TransportError`; after ``listen()`` it stays so until
    ``close()``."""
    STOPPING = "stopping"
    """``close()`` is running: the ``on_shutdown`` hooks, then intake stops and in-flight
    handlers drain."""
    STOPPED = "stopped"
    """Not listening (never started, closed, or a ``listen()`` that failed)."""


@dataclass(frozen=True)
class Features:
    """What a transport can do; the conformance suite selects its cases from these.

    ``unknown_pattern`` is what a caller sees when no handler exists: an ``"error"`` reply
    (TCP, RabbitMQ), ``"no_responders"`` (NATS) or ``"timeout"`` (Redis, MQTT, Kafka:
    nobody is subscribed, so nobody answers).
    """

    name: str
    unknown_pattern: Literal["error", "no_responders", "timeout"]
    object_patterns: bool = True
    broadcast: bool = False
    competing_consumers: bool = False
    durable_events: bool = False
    headers: bool = False
    queue_groups: bool = False
    text_only: bool = False
    streaming: bool = True
    unreadable_reply: Literal["fails_request", "dropped", "ends_connection"] = "dropped"
    """What a reply that cannot be read does (the rule of :class:`ClientTransport`)."""
    dead_letter: bool = False
    """The server's contexts implement :meth:`Context.dead_letter` (a failure policy may
    name a dead-letter destination)."""
    isolation_option: str | None = None
    """Option naming the broker-side service (RabbitMQ ``queue``, Kafka ``group_id``):
    the conformance suite gives each test its own value so tests never share state."""
    durable_options: dict[str, Any] = field(default_factory=dict)
    """Options a service and its clients need for accepted messages to survive a crash
    (RabbitMQ: ``no_ack=False`` and persistent messages); the durability cases use them."""
    notes: dict[str, str] = field(default_factory=dict)
    """Declared differences, case name → reason, shown when the suite skips a case."""


class Release(Protocol):
    """Returned by :meth:`ClientTransport.request`; called once when the call is over."""

    def __call__(self) -> None: ...


def no_release() -> None:
    """The :class:`Release` of a request that left no per-request state in the adapter."""


@runtime_checkable
class ReplySink(Protocol):
    """What a client transport reports to: implemented by :class:`polybus.ClientProxy`."""

    def on_reply(self, reply: Reply) -> None:
        """A reply arrived. ``reply.id`` is the request id; unknown ids are dropped."""

    def on_request_error(self, id: str, exc: BaseException) -> None:
        """Fail one pending request with ``exc`` (e.g. ``NoRespondersError``)."""

    def on_connection_lost(self, exc: BaseException) -> None:
        """The connection dropped: every pending request fails with a ``TransportError``."""

    def on_status(self, status: ConnectionStatus) -> None:
        """The connection state changed."""


@runtime_checkable
class ClientTransport(Protocol):
    """The client half of an adapter.

    - ``connect`` is called once by core (core makes it idempotent and lazy); it must
      return only when requests can be sent, or raise ``TransportError``.
    - ``request`` sends one request and returns a ``Release`` that core calls exactly once
      when the call is over (reply, error, timeout, cancel): the adapter drops any
      per-request state there (e.g. a reply-channel reference). Replies go to
      ``sink.on_reply`` with ``id`` set; the adapter must subscribe for replies *before*
      the request is published. It may be called from many tasks at once.
    - ``publish_event`` returns once the transport accepted the event (written to the
      socket, or acknowledged by the broker where the transport confirms publishes).
    - ``close`` stops everything; core has already failed pending requests.

    A reply that cannot be read (undecodable, or over ``max_message_bytes``) follows one
    rule, applied by :func:`polybus.packets.read_reply` (or
    :func:`~polybus.packets.unreadable_reply` for a transport that decodes its own
    records), and declared in ``Features.unreadable_reply``:

    - where the transport tells which request a reply belongs to without decoding the body
      (NATS: the reply inbox subject; RabbitMQ: ``correlation_id``; Kafka: the
      ``kafka_correlationId`` header), that request fails at once with ``ProtocolError``:
      the caller does not wait for its timeout;
    - where it cannot (Redis, MQTT: the id is inside the body), the reply is logged
      (bounded) and dropped, and the call ends at its timeout;
    - on a byte stream (TCP), a corrupt frame cannot be resynchronised: the connection
      ends and every pending request fails with ``TransportError``.
    """

    features: Features

    async def connect(self, sink: ReplySink) -> None: ...

    async def close(self) -> None: ...

    async def request(self, request: Request) -> Release: ...

    async def publish_event(self, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A handler route the server must receive: its route string, kind and options."""

    route: str
    kind: Literal["message", "event"]
    options: dict[str, Any] = field(default_factory=dict)


class Context:
    """One incoming message, as the server's handlers see it: the per-transport context.

    Adapters subclass it (``TcpContext``, ``RedisContext``, ``NatsContext``, ``RabbitMQContext``,
    ``KafkaContext``...) to add what their broker knows and to implement
    :meth:`send_reply` and :meth:`settle`. A handler receives it by annotating a parameter
    with ``Context`` or a subclass.

    ``pattern`` is the string the server dispatches on (a channel/subject/topic, or a
    string pattern from the body) or the pattern object from the body; ``id`` is
    :data:`~polybus.packets.MISSING` for events.
    """

    __slots__ = ("data", "deadline", "headers", "id", "pattern")

    transport_name = "unknown"

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any = MISSING,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.pattern = pattern
        self.data = data
        self.id = id
        self.headers = headers
        self.deadline = deadline

    @property
    def is_request(self) -> bool:
        return self.id is not MISSING

    @property
    def expired(self) -> bool:
        """True when the caller's deadline has passed: its reply would be dropped."""
        return self.deadline is not None and time.time() > self.deadline

    async def send_reply(self, reply: Reply) -> None:
        """Write one reply packet back to the caller (adapters implement)."""
        raise NotImplementedError

    async def settle(self, ok: bool) -> None:
        """Called once handling is over: ack/commit (``ok``) or reject without requeue.

        Never called for a message taken during shutdown or whose handler was cancelled by
        it: such a message stays unsettled, so the broker delivers it again."""

    async def dead_letter(self, destination: str, error: BaseException) -> None:
        """Publish this message, as it arrived (body and headers), to ``destination``: a
        queue (RabbitMQ), topic (Kafka), subject (NATS) or channel (Redis), adding the
        headers :data:`~polybus.packets.DEAD_LETTER_ERROR` (``describe_error(error)``) and
        :data:`~polybus.packets.DEAD_LETTER_ORIGIN` (where it came from) where the
        transport has headers. Returns once the broker has it (confirmed where the
        transport confirms); core then settles the message as handled. Raises
        ``TransportError`` when it could not. Only transports whose ``Features.dead_letter``
        is true implement it."""
        raise NotImplementedError(f"{type(self).__name__} cannot dead-letter")

    def __repr__(self) -> str:
        kind = "request" if self.is_request else "event"
        return f"<{type(self).__name__} {kind} pattern={short_repr(self.pattern)}>"


class ReplyPublisher(Protocol):
    """A server whose replies are NestJS envelopes published on its one connection (Redis,
    MQTT): what a :class:`PublishedReplyContext` replies through."""

    @property
    def options(self) -> TransportOptions: ...

    @property
    def serializer(self) -> Serializer: ...

    async def publish_reply(self, destination: Any, body: bytes) -> None:
        """Publish one encoded reply to the reply channel of ``destination``; nothing while
        the connection is down (its callers were failed when it dropped)."""


class PublishedReplyContext(Context):
    """A context whose reply is the envelope published by a :class:`ReplyPublisher` to
    ``reply_to``; ``headers`` are the message's (its deadline read from them)."""

    __slots__ = ("_publisher", "_reply_to")

    def __init__(
        self,
        pattern: Any,
        data: Any,
        id: Any,
        headers: dict[str, str] | None,
        publisher: ReplyPublisher,
        reply_to: Any,
    ) -> None:
        super().__init__(pattern, data, id, headers, parse_deadline(headers))
        self._publisher = publisher
        self._reply_to = reply_to

    async def send_reply(self, reply: Reply) -> None:
        publisher = self._publisher
        body = publisher.options.check_size(encode_reply(publisher.serializer, reply))
        await publisher.publish_reply(self._reply_to, body)


class MessageSink(Protocol):
    """Implemented by :class:`polybus.Microservice`: hand it every incoming message.

    It returns once the message was accepted for handling (a concurrency slot was free),
    which gives adapters back-pressure; handling goes on in the background and ends with
    ``context.settle(ok)``.
    """

    async def __call__(self, context: Context) -> None: ...


@runtime_checkable
class SupportsCleanup(Protocol):
    """Optional: a server transport that can delete the broker-side state it created
    (durable queues, topics). The conformance suite calls it after each test."""

    async def delete_resources(self) -> None: ...


@runtime_checkable
class ServerTransport(Protocol):
    """The server half of an adapter.

    - ``listen`` subscribes/binds for ``routes`` and starts delivering to ``sink``; it
      returns once the server is receiving (a request published after it returns is
      handled).
    - ``stop`` stops taking new messages (unsubscribe, cancel consumers, stop accepting),
      while replies of in-flight handlers can still be sent.
    - ``close`` releases every connection; called after in-flight work was drained.
    """

    features: Features

    async def listen(self, routes: Sequence[RouteSpec], sink: MessageSink) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReportsConnection(Protocol):
    """Optional: a server transport that tells core when its broker connection drops and
    comes back, for :attr:`polybus.Microservice.status`.

    Core calls ``watch_connection`` once, before ``listen``. The adapter then calls
    ``listener(ConnectionStatus.CONNECTED)`` when the connection is back (subscriptions
    restored) and any other status (``DISCONNECTED``, ``RECONNECTING``...) while it is down.
    :class:`ConnectionReporter` implements it."""

    def watch_connection(self, listener: Callable[[ConnectionStatus], None]) -> None: ...


class ConnectionReporter:
    """Implements :class:`ReportsConnection`: an adapter inherits it and calls
    :meth:`report_connection` (a no-op until core watches)."""

    _connection_listener: Callable[[ConnectionStatus], None] | None = None

    def watch_connection(self, listener: Callable[[ConnectionStatus], None]) -> None:
        self._connection_listener = listener

    def report_connection(self, status: ConnectionStatus) -> None:
        listener = self._connection_listener
        if listener is not None:
            listener(status)
