"""Kafka options: URL and NestJS-object parsing, and the keyword arguments for aiokafka."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from polybus.config import TransportOptions, redact_url, tls_client_context
from polybus.errors import ConfigError
from polybus.secrets import guard_loggers

__all__ = ["KafkaOptions"]

log = logging.getLogger("polybus.kafka")

_URL_ALIASES = {
    "ca": "ssl_cafile",
    "cafile": "ssl_cafile",
    "cert": "ssl_certfile",
    "certfile": "ssl_certfile",
    "key": "ssl_keyfile",
    "keyfile": "ssl_keyfile",
    "username": "sasl_plain_username",
    "password": "sasl_plain_password",
    "mechanism": "sasl_mechanism",
    "group": "group_id",
    "postfix": "postfix_id",
}


@dataclass
class KafkaOptions(TransportOptions):
    """Options of the Kafka transport (``kafka://host:port[,host:port...]?option=value``).

    Identities follow NestJS: the client id is ``client_id + postfix_id`` and the server's
    consumer group is ``group_id + postfix_id``, with ``postfix_id`` defaulting to
    ``"-client"`` on a client and ``"-server"`` on a server. Topics that polybus creates
    (request topics, ``<route>.reply``) get ``num_partitions`` partitions and
    ``replication_factor`` replicas (default: 3, or the number of brokers if fewer).
    """

    brokers: list[str] = field(default_factory=lambda: ["localhost:9092"])
    client_id: str = "nestjs-consumer"
    group_id: str = "nestjs-group"
    postfix_id: str | None = None
    """Appended to ``client_id`` and ``group_id``; None: ``-client`` / ``-server`` like NestJS."""

    # topics
    create_topics: bool = True
    """Create missing request/reply/event topics with the admin API (no auto-creation)."""
    num_partitions: int = 3
    replication_factor: int | None = None
    topic_config: dict[str, str] | None = None
    """Topic configs for the topics polybus creates (e.g. ``{"retention.ms": "3600000"}``)."""

    # consumers
    fetch_max_wait_ms: int = 100
    """Longest a fetch waits at the broker when no data is there. Apache Kafka answers a
    fetch as soon as one record arrives (``fetch_min_bytes=1``), so replies do not wait for
    it; brokers that do not wake waiting fetches (tansu) add half of it to each hop."""
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    rebalance_timeout_ms: int | None = None
    from_beginning: bool = False
    """Server: a partition without committed offset starts at its beginning (else its end)."""
    ordered_events: bool = True
    """Server: records of an event topic's partition are handled one after the other, in
    offset order. Request topics are always dispatched in order and handled concurrently."""
    commit_interval_ms: int = 50
    """Server: finished offsets are committed at most this often (and always on revoke/close)."""
    max_partition_queue: int = 1000
    """Server: fetched records buffered per partition before fetching from it pauses."""
    type_hints: bool = True
    """Write the header ``x-polybus-type`` so polybus peers decode values exactly (``42``
    stays a number); NestJS ignores it and reads values by its own rule."""
    keep_binary: bool = False
    """Server: hand record values to handlers as bytes (NestJS ``parser.keepBinary``)."""
    reply_partition: int | None = None
    """Client: the partition of each ``<route>.reply`` topic this client consumes (default:
    one chosen at random per client instance, so instances do not read each other's replies)."""

    # producers
    acks: int | str = -1
    linger_ms: int = 0
    """How long the producer waits for more records before sending a batch. Records still
    batch while a produce request is in flight; each millisecond here is added to every hop
    (aiokafka's default too; measured here, 1 ms cost a request-reply 2 ms and halved events
    at 100 in flight)."""
    max_batch_size: int = 1024 * 1024
    compression_type: str | None = None
    send: dict[str, Any] | None = None
    """NestJS ``send`` options merged into every produce: ``acks``, ``compression``."""
    request_timeout_ms: int = 30000

    # security (passed through to aiokafka)
    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    sasl_mechanism: str = "PLAIN"
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    sasl_oauth_token_provider: Any = field(default=None, repr=False)

    # raw aiokafka keyword arguments, applied last
    producer_config: dict[str, Any] | None = None
    consumer_config: dict[str, Any] | None = None

    # -- parsing ------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str) -> KafkaOptions:
        """``kafka://[user:password@]host:port[,host:port...][?option=value&...]``.

        Credentials in the URL set SASL PLAIN (``security_protocol=SASL_PLAINTEXT`` unless
        the query says ``SASL_SSL``). Query names are option names (``ca``, ``cert``,
        ``key``, ``username``, ``password``, ``mechanism`` are accepted as short forms).
        """
        scheme, sep, rest = url.partition("://")
        if not sep or scheme != "kafka":
            raise ConfigError(f"URL {redact_url(url)!r} must use the kafka:// scheme")
        rest, _, query_part = rest.partition("?")
        netloc = rest.partition("/")[0]
        overrides: dict[str, Any] = {}
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            user, _, password = userinfo.partition(":")
            overrides["sasl_plain_username"] = unquote(user)
            if password:
                overrides["sasl_plain_password"] = unquote(password)
            overrides["security_protocol"] = "SASL_PLAINTEXT"
        brokers = [b.strip() for b in netloc.split(",") if b.strip()]
        for broker in brokers:
            host, _, port = broker.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"invalid broker address {broker!r} in {redact_url(url)!r} (expected host:port)"
                )
        if brokers:
            overrides["brokers"] = brokers
        query = dict(parse_qsl(query_part, keep_blank_values=True))
        options = cls().with_overrides(overrides).with_query(query, _URL_ALIASES)
        _acks(options.acks)  # a bad value fails here rather than at connect
        return options

    @classmethod
    def from_nest(cls, options: Mapping[str, Any]) -> KafkaOptions:
        """From NestJS's Kafka options: ``{client: {brokers, clientId, ssl, sasl}, consumer:
        {groupId, sessionTimeout, heartbeatInterval, maxWaitTimeInMs}, postfixId, subscribe:
        {fromBeginning}, send, parser: {keepBinary}, ...}``; polybus option names are
        accepted at the top level too. kafkajs-only tuning (retry, logLevel...) is ignored."""
        opts = dict(options)
        out: dict[str, Any] = {}
        client = dict(opts.pop("client", None) or {})
        consumer = dict(opts.pop("consumer", None) or {})
        producer = dict(opts.pop("producer", None) or {})
        subscribe = dict(opts.pop("subscribe", None) or {})
        parser = dict(opts.pop("parser", None) or {})
        for ignored in ("run", "producerOnlyMode", "deserializer", "serializer", "postfixId"):
            if ignored == "postfixId" and ignored in opts:
                out["postfix_id"] = opts.pop(ignored)
            else:
                opts.pop(ignored, None)
        brokers = client.pop("brokers", None)
        if brokers is not None:
            out["brokers"] = [brokers] if isinstance(brokers, str) else list(brokers)
        if "clientId" in client:
            out["client_id"] = client.pop("clientId")
        ssl_option = client.pop("ssl", None)
        sasl = client.pop("sasl", None)
        if ssl_option:
            out["security_protocol"] = "SSL"
            if isinstance(ssl_option, ssl.SSLContext):
                out["ssl_context"] = ssl_option
            elif isinstance(ssl_option, Mapping):
                out.update(_nest_tls(ssl_option))
        if sasl:
            out["security_protocol"] = "SASL_SSL" if ssl_option else "SASL_PLAINTEXT"
            out["sasl_mechanism"] = str(sasl.get("mechanism", "plain")).upper()
            if "username" in sasl:
                out["sasl_plain_username"] = sasl["username"]
            if "password" in sasl:
                out["sasl_plain_password"] = sasl["password"]
        if "requestTimeout" in client:
            out["request_timeout_ms"] = int(client.pop("requestTimeout"))
        names = {
            "groupId": "group_id",
            "sessionTimeout": "session_timeout_ms",
            "heartbeatInterval": "heartbeat_interval_ms",
            "rebalanceTimeout": "rebalance_timeout_ms",
            "maxWaitTimeInMs": "fetch_max_wait_ms",
        }
        for nest_name, name in names.items():
            if nest_name in consumer:
                out[name] = consumer.pop(nest_name)
        if producer.pop("idempotent", False):
            out["producer_config"] = {"enable_idempotence": True}
        if "fromBeginning" in subscribe:
            out["from_beginning"] = bool(subscribe["fromBeginning"])
        if "keepBinary" in parser:
            out["keep_binary"] = bool(parser["keepBinary"])
        dropped = [f"client.{k}" for k in client] + [f"consumer.{k}" for k in consumer]
        dropped += [f"producer.{k}" for k in producer]
        if dropped:
            log.debug("kafka: ignoring kafkajs-only options %s", ", ".join(sorted(dropped)))
        out.update(opts)
        return cls().with_overrides(out)

    # -- derived values -----------------------------------------------------------------

    def postfix(self, role: str) -> str:
        if self.postfix_id is not None:
            return self.postfix_id
        return "-client" if role == "client" else "-server"

    def client_kwargs(self, role: str) -> dict[str, Any]:
        """Connection and security arguments shared by producers, consumers and admins."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.brokers),
            "client_id": self.client_id + self.postfix(role),
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
        }
        context = self.ssl()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.sasl_plain_username is not None:
            kwargs["sasl_plain_username"] = self.sasl_plain_username
            kwargs["sasl_plain_password"] = self.sasl_plain_password
            guard_loggers("aiokafka", self.sasl_plain_password)  # its DEBUG log prints them
        if self.sasl_oauth_token_provider is not None:
            kwargs["sasl_oauth_token_provider"] = self.sasl_oauth_token_provider
        return kwargs

    def producer_kwargs(self, role: str) -> dict[str, Any]:
        send = dict(self.send or {})
        acks = send.pop("acks", self.acks)
        compression = send.pop("compression", self.compression_type)
        kwargs = self.client_kwargs(role)
        kwargs.update(
            acks=_acks(acks),
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_size,
            # a record may be max_message_bytes plus its key and headers
            max_request_size=self.max_message_bytes + 64 * 1024,
            enable_idempotence=False,
        )
        if compression:
            kwargs["compression_type"] = _compression(compression)
        kwargs.update(self.producer_config or {})
        return kwargs

    def consumer_kwargs(self, role: str) -> dict[str, Any]:
        kwargs = self.client_kwargs(role)
        kwargs.update(
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_min_bytes=1,
            fetch_max_bytes=max(52428800, self.max_message_bytes + 64 * 1024),
            max_partition_fetch_bytes=1024 * 1024,
            check_crcs=False,
        )
        if role == "server":
            kwargs.update(
                group_id=self.group_id + self.postfix(role),
                auto_offset_reset="earliest" if self.from_beginning else "latest",
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                rebalance_timeout_ms=self.rebalance_timeout_ms,
                max_poll_interval_ms=max(300000, self.session_timeout_ms),
            )
        else:
            kwargs.update(group_id=None, auto_offset_reset="latest")
        kwargs.update(self.consumer_config or {})
        return kwargs

    def ssl(self) -> ssl.SSLContext | None:
        if self.ssl_context is not None:
            return self.ssl_context
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = tls_client_context(
            self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_password
        )
        context.check_hostname = self.ssl_check_hostname
        return context

    def describe(self) -> str:
        """``kafka://broker,...`` for reprs and errors (never credentials)."""
        return "kafka://" + ",".join(self.brokers)


def _acks(value: Any) -> int | str:
    if value in (-1, "-1", "all"):
        return "all"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"acks must be 0, 1, -1 or 'all', got {value!r}") from None


def _compression(value: Any) -> str:
    # kafkajs CompressionTypes: 0 None, 1 GZIP, 2 Snappy, 3 LZ4, 4 ZSTD
    names = {0: None, 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    if isinstance(value, int):
        mapped = names.get(value)
        if mapped is None:
            raise ConfigError(f"unknown compression {value!r}")
        return mapped
    return str(value).lower()


def _nest_tls(tls: Mapping[str, Any]) -> dict[str, Any]:
    """kafkajs ``ssl`` (Node ``tls.connect`` options): file paths or PEM text for ``ca``."""
    ca = tls.get("ca")
    if isinstance(ca, (list, tuple)):
        ca = "\n".join(str(c) for c in ca)
    cert, key = tls.get("cert"), tls.get("key")
    if (isinstance(cert, str) and "-----BEGIN" in cert) or (
        isinstance(key, str) and "-----BEGIN" in key
    ):
        raise ConfigError(
            "kafka: pass client certificates as file paths (ssl_certfile/ssl_keyfile)"
            " or an ssl_context"
        )
    out: dict[str, Any] = {}
    if isinstance(ca, str) and "-----BEGIN" in ca:
        context = ssl.create_default_context(cadata=ca)
        if tls.get("rejectUnauthorized") is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        out["ssl_context"] = context
        return out
    if ca:
        out["ssl_cafile"] = str(ca)
    if cert:
        out["ssl_certfile"] = str(cert)
    if key:
        out["ssl_keyfile"] = str(key)
    if "passphrase" in tls:
        out["ssl_password"] = tls["passphrase"]
    if tls.get("rejectUnauthorized") is False:
        context = ssl.create_default_context(cafile=out.get("ssl_cafile"))
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if cert:
            context.load_cert_chain(str(cert), str(key) if key else None, out.get("ssl_password"))
        out = {"ssl_context": context}
    return out
