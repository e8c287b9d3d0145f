"""Prometheus metrics as middleware (``pip install polybus[prometheus]``).

::

    from prometheus_client import start_http_server
    from polybus.prometheus import PrometheusMiddleware

    metrics = PrometheusMiddleware(app_name="billing")
    app = Microservice(url, middleware=[metrics])          # what the service handles
    client = create_client(url, middleware=[metrics])      # what it sends
    start_http_server(9100, addr="127.0.0.1")              # GET /metrics

The metrics are FastStream's (``faststream.prometheus``), with the same names after the
prefix and the same labels, so its Grafana dashboard (22130) works on them; pass
``metrics_prefix="faststream"`` to keep a dashboard's queries as they are:

- ``<prefix>_received_messages_total`` (counter), ``..._received_messages_in_process``
  (gauge), ``..._received_processed_messages_duration_seconds`` (histogram): labels
  ``app_name``, ``broker``, ``handler``;
- ``..._received_processed_messages_total`` (counter): the same and ``status``;
- ``..._received_processed_messages_exceptions_total`` (counter): the same and
  ``exception_type``;
- ``<prefix>_published_messages_duration_seconds`` (histogram): ``app_name``, ``broker``,
  ``destination``; ``..._published_messages_total`` (counter): the same and ``status``
  (``success`` or ``error``); ``..._published_messages_exceptions_total`` (counter): the
  same and ``exception_type``.

``broker`` is the transport's name (``tcp``, ``redis``, ``nats``, ``rabbitmq``, ``kafka``,
``mqtt``: FastStream's names where it has the broker); ``handler`` and ``destination`` are
the route (the pattern as a string: ``{"cmd":"sum"}`` for an object pattern).

What is counted, and how polybus's outcomes map onto FastStream's statuses:

- Server side, each handler call is one received message: an event with two handlers
  counts twice, and each retry of a failure policy counts again. ``status`` is ``acked``
  when the handler returned (the reply was sent, or streamed to the end) and ``error``
  when it raised — an :class:`~polybus.RpcException`, a validation error or anything else;
  the exception counter tells them apart (``exception_type="RpcException"``,
  ``"ValidationError"``...). ``nacked``, ``rejected`` and ``skipped`` never occur: what
  polybus rejects or skips without calling a handler (unknown or unroutable patterns,
  requests whose caller's deadline has passed) never reaches middleware, and how a failed
  message is settled afterwards (retry, dead-letter, reject) is the failure policy's.
- A handler cancelled at shutdown leaves the in-process gauge and is counted as received
  only: its message is not settled (the broker delivers it again).
- Client side, ``send()``, a streamed ``send()`` and ``emit()`` each count one published
  message. The duration of a request is the whole call (until the reply, or the last item
  of a stream); ``status`` is ``error`` when the call raised (an error reply, a timeout, a
  broken connection), with its type in the exception counter. A stream its consumer stops
  reading counts as ``success`` when it is closed.
- FastStream's ``received_messages_size_bytes`` is not exported: middleware sees decoded
  payloads, not the bytes that crossed.

Metrics are shared per registry and prefix, so several middleware objects (a client's
and a service's, or one per ``app_name``) can use one registry.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from .errors import ConfigError
from .middleware import (
    ClientMiddleware,
    EmitNext,
    HandleNext,
    Inbound,
    Outgoing,
    SendNext,
    ServerMiddleware,
    StreamNext,
)

__all__ = ["PrometheusMiddleware"]

DEFAULT_BUCKETS: tuple[float, ...] = tuple(Histogram.DEFAULT_BUCKETS)
"""prometheus_client's default buckets (5 ms to 10 s), as FastStream uses them."""


class _Metrics:
    """The eight metric families of one registry and prefix."""

    def __init__(self, prefix: str, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        received = ("app_name", "broker", "handler")
        published = ("app_name", "broker", "destination")
        self.received_total = Counter(
            f"{prefix}_received_messages_total",
            "Count of received messages by broker and handler",
            received,
            registry=None,
        )
        self.in_process = Gauge(
            f"{prefix}_received_messages_in_process",
            "Gauge of received messages in process by broker and handler",
            received,
            registry=None,
        )
        self.processed_total = Counter(
            f"{prefix}_received_processed_messages_total",
            "Count of received processed messages by broker, handler and status",
            (*received, "status"),
            registry=None,
        )
        self.processed_duration = Histogram(
            f"{prefix}_received_processed_messages_duration_seconds",
            "Histogram of received processed messages duration in seconds by broker and handler",
            received,
            registry=None,
            buckets=buckets,
        )
        self.processed_exceptions = Counter(
            f"{prefix}_received_processed_messages_exceptions_total",
            "Count of received processed messages exceptions by broker, handler and exception_type",
            (*received, "exception_type"),
            registry=None,
        )
        self.published_total = Counter(
            f"{prefix}_published_messages_total",
            "Count of published messages by destination and status",
            (*published, "status"),
            registry=None,
        )
        self.published_duration = Histogram(
            f"{prefix}_published_messages_duration_seconds",
            "Histogram of published messages duration in seconds by broker and destination",
            published,
            registry=None,
            buckets=buckets,
        )
        self.published_exceptions = Counter(
            f"{prefix}_published_messages_exceptions_total",
            "Count of published messages exceptions by broker, destination and exception_type",
            (*published, "exception_type"),
            registry=None,
        )
        self.collectors: tuple[Collector, ...] = (
            self.received_total,
            self.in_process,
            self.processed_total,
            self.processed_duration,
            self.processed_exceptions,
            self.published_total,
            self.published_duration,
            self.published_exceptions,
        )

    def register(self, registry: CollectorRegistry) -> None:
        """Register all eight, or none: a name already taken leaves the registry as it was."""
        done: list[Collector] = []
        try:
            for collector in self.collectors:
                registry.register(collector)
                done.append(collector)
        except ValueError:
            for collector in done:
                registry.unregister(collector)
            raise


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)


def _metrics(registry: CollectorRegistry, prefix: str, buckets: tuple[float, ...]) -> _Metrics:
    """The metrics of ``prefix`` in ``registry``, registered by the first middleware."""
    by_prefix = _SHARED.setdefault(registry, {})
    metrics = by_prefix.get(prefix)
    if metrics is None:
        try:
            metrics = _Metrics(prefix, buckets)
            metrics.register(registry)
        except ValueError as exc:  # not a metric name, or one some other collector has
            raise ConfigError(f"cannot register the {prefix}_* metrics: {exc}") from exc
        by_prefix[prefix] = metrics
    elif metrics.buckets != buckets:
        raise ConfigError(
            f"the {prefix}_* metrics of this registry already have other duration buckets"
        )
    return metrics


class _ByType:
    """One exception counter's series of one label set, a child per exception type."""

    __slots__ = ("_children", "_family", "_labels")

    def __init__(self, family: Counter, labels: tuple[str, str, str]) -> None:
        self._family = family
        self._labels = labels
        self._children: dict[str, Counter] = {}

    def count(self, exc: BaseException) -> None:
        name = type(exc).__name__
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = self._family.labels(*self._labels, name)
        child.inc()


class _Received:
    """The series of one (broker, handler): looked up once, not per message."""

    __slots__ = ("acked", "duration", "error", "exceptions", "in_process", "received")

    def __init__(self, metrics: _Metrics, labels: tuple[str, str, str]) -> None:
        self.received = metrics.received_total.labels(*labels)
        self.in_process = metrics.in_process.labels(*labels)
        self.duration = metrics.processed_duration.labels(*labels)
        self.acked = metrics.processed_total.labels(*labels, "acked")
        self.error = metrics.processed_total.labels(*labels, "error")
        self.exceptions = _ByType(metrics.processed_exceptions, labels)


class _Published:
    """The series of one (broker, destination)."""

    __slots__ = ("duration", "error", "exceptions", "success")

    def __init__(self, metrics: _Metrics, labels: tuple[str, str, str]) -> None:
        self.duration = metrics.published_duration.labels(*labels)
        self.success = metrics.published_total.labels(*labels, "success")
        self.error = metrics.published_total.labels(*labels, "error")
        self.exceptions = _ByType(metrics.published_exceptions, labels)

    def done(self, started: float, exc: BaseException | None) -> None:
        self.duration.observe(time.perf_counter() - started)
        if exc is None:
            self.success.inc()
        else:
            self.error.inc()
            self.exceptions.count(exc)


class PrometheusMiddleware(ClientMiddleware, ServerMiddleware):
    """Counts, times and gauges what a service handles and what a client sends.

    One object serves both sides (pass it to ``Microservice(middleware=...)`` and
    ``create_client(middleware=...)``). ``registry`` defaults to prometheus_client's global
    one; ``app_name`` (the ``app_name`` label) defaults to ``metrics_prefix``, as in
    FastStream; ``duration_buckets`` are the histograms' upper bounds in seconds.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry = REGISTRY,
        app_name: str | None = None,
        metrics_prefix: str = "polybus",
        duration_buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not isinstance(registry, CollectorRegistry):
            raise ConfigError(
                f"registry must be a prometheus_client CollectorRegistry, got {registry!r}"
            )
        if not metrics_prefix:
            raise ConfigError("metrics_prefix must not be empty")
        self.app_name = metrics_prefix if app_name is None else app_name
        self.metrics_prefix = metrics_prefix
        self._metrics = _metrics(registry, metrics_prefix, tuple(duration_buckets))
        self._received: dict[tuple[str, str], _Received] = {}
        self._published: dict[tuple[str, str], _Published] = {}

    def _received_series(self, message: Inbound) -> _Received:
        key = (message.transport, message.route)
        series = self._received.get(key)
        if series is None:
            series = self._received[key] = _Received(self._metrics, (self.app_name, *key))
        return series

    def _published_series(self, message: Outgoing) -> _Published:
        key = (message.transport, message.route)
        series = self._published.get(key)
        if series is None:
            series = self._published[key] = _Published(self._metrics, (self.app_name, *key))
        return series

    # -- server side -----------------------------------------------------------------------

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        series = self._received_series(message)
        series.received.inc()
        series.in_process.inc()
        started = time.perf_counter()
        try:
            result = await call_next(message)
        except Exception as exc:
            series.duration.observe(time.perf_counter() - started)
            series.error.inc()
            series.exceptions.count(exc)
            raise
        finally:
            series.in_process.dec()
        series.duration.observe(time.perf_counter() - started)
        series.acked.inc()
        return result

    # -- client side -----------------------------------------------------------------------

    async def send(self, message: Outgoing, call_next: SendNext) -> Any:
        series = self._published_series(message)
        started = time.perf_counter()
        try:
            result = await call_next(message)
        except Exception as exc:
            series.done(started, exc)
            raise
        series.done(started, None)
        return result

    def stream(self, message: Outgoing, call_next: StreamNext) -> AsyncIterator[Any]:
        return _TimedStream(call_next(message), self._published_series(message))

    async def emit(self, message: Outgoing, call_next: EmitNext) -> None:
        series = self._published_series(message)
        started = time.perf_counter()
        try:
            await call_next(message)
        except Exception as exc:
            series.done(started, exc)
            raise
        series.done(started, None)

    def __repr__(self) -> str:
        return f"<PrometheusMiddleware {self.metrics_prefix}_* app_name={self.app_name!r}>"


class _TimedStream(AsyncIterator[Any]):
    """A streamed reply, timed from its first ``__anext__`` to its end, error or close.

    A class rather than an async generator so that ``aclose()`` reaches the inner
    iterator at once, as it would without the middleware."""

    __slots__ = ("_counted", "_inner", "_series", "_started")

    def __init__(self, inner: AsyncIterator[Any], series: _Published) -> None:
        self._inner = inner
        self._series = series
        self._started: float | None = None
        self._counted = False

    async def __anext__(self) -> Any:
        if self._started is None:
            self._started = time.perf_counter()
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._finish(None)
            raise
        except Exception as exc:
            self._finish(exc)
            raise

    async def aclose(self) -> None:
        self._finish(None)
        self._counted = True  # closed before it started: never counted
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()

    def _finish(self, exc: BaseException | None) -> None:
        """Count the stream once: at its first end, error or close after it started."""
        if self._started is not None and not self._counted:
            self._counted = True
            self._series.done(self._started, exc)
