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
and a service's, or one per ``app_name``) can use one registry. They are kept in plain
Python numbers and turned into metric families when the registry is scraped, which costs
a message a fraction of what prometheus_client's locked ``Counter``/``Histogram`` would
(``python -m bench --floor --middleware prometheus``). So: one middleware object counts
from one event loop's thread (scrapes may come from any thread), prometheus_client's
multiprocess mode does not see these series, and counters export no ``_created`` samples.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NamedTuple

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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

__all__ = ["DEFAULT_BUCKETS", "PrometheusMiddleware"]

DEFAULT_BUCKETS: tuple[float, ...] = tuple(Histogram.DEFAULT_BUCKETS)
"""prometheus_client's default buckets (5 ms to 10 s, and +Inf), as FastStream uses them."""

Labels = tuple[str, str, str]
"""(app_name, broker, handler or destination)."""


class _Timed:
    """A duration histogram and an exception counter of one label set."""

    __slots__ = ("bounds", "buckets", "exceptions", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * len(bounds)  # not cumulative: summed when scraped
        self.sum = 0.0
        self.exceptions: dict[str, int] = {}

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def failed(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.exceptions[name] = self.exceptions.get(name, 0) + 1

    def histogram(self, family: HistogramMetricFamily, labels: Labels, les: list[str]) -> None:
        """Add the cumulative buckets (``les``: the bounds as Prometheus writes them)."""
        total = 0
        buckets = []
        for le, count in zip(les, list(self.buckets), strict=True):
            total += count
            buckets.append((le, float(total)))
        family.add_metric(labels, buckets, self.sum)

    def exception_counts(self, family: CounterMetricFamily, labels: Labels) -> None:
        for name, count in list(self.exceptions.items()):
            family.add_metric((*labels, name), count)


class _Received(_Timed):
    """What one service counts for one (app_name, broker, handler)."""

    __slots__ = ("acked", "error", "in_process", "received")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__(bounds)
        self.received = 0
        self.in_process = 0
        self.acked = 0
        self.error = 0


class _Published(_Timed):
    """What one client counts for one (app_name, broker, destination)."""

    __slots__ = ("error", "success")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__(bounds)
        self.success = 0
        self.error = 0

    def done(self, started: float, exc: BaseException | None) -> None:
        self.observe(time.perf_counter() - started)
        if exc is None:
            self.success += 1
        else:
            self.error += 1
            self.failed(exc)


class _Metrics(Collector):
    """The eight metric families of one registry and prefix, made from the series when
    the registry is collected (a scrape, in the HTTP server's thread)."""

    def __init__(self, prefix: str, buckets: Sequence[float]) -> None:
        try:
            values = [] if isinstance(buckets, (str, bytes)) else list(buckets)
        except TypeError:  # not iterable
            values = []
        if not values or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and b == b for b in values
        ):
            raise ConfigError(f"duration_buckets must be numbers (seconds), got {buckets!r}")
        bounds = sorted(float(b) for b in set(values))
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self.les: list[str] = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self.prefix = prefix
        self.received: dict[Labels, _Received] = {}
        self.published: dict[Labels, _Published] = {}
        self._lock = threading.Lock()  # a new series against a scrape copying the dict

    def received_series(self, labels: Labels) -> _Received:
        with self._lock:
            return self.received.setdefault(labels, _Received(self.bounds))

    def published_series(self, labels: Labels) -> _Published:
        with self._lock:
            return self.published.setdefault(labels, _Published(self.bounds))

    def _families(self) -> _Families:
        p = self.prefix
        received = ("app_name", "broker", "handler")
        published = ("app_name", "broker", "destination")
        return _Families(
            CounterMetricFamily(
                f"{p}_received_messages_total",
                "Count of received messages by broker and handler",
                labels=received,
            ),
            GaugeMetricFamily(
                f"{p}_received_messages_in_process",
                "Gauge of received messages in process by broker and handler",
                labels=received,
            ),
            CounterMetricFamily(
                f"{p}_received_processed_messages_total",
                "Count of received processed messages by broker, handler and status",
                labels=(*received, "status"),
            ),
            HistogramMetricFamily(
                f"{p}_received_processed_messages_duration_seconds",
                "Histogram of received processed messages duration in seconds by broker and "
                "handler",
                labels=received,
            ),
            CounterMetricFamily(
                f"{p}_received_processed_messages_exceptions_total",
                "Count of received processed messages exceptions by broker, handler and "
                "exception_type",
                labels=(*received, "exception_type"),
            ),
            CounterMetricFamily(
                f"{p}_published_messages_total",
                "Count of published messages by destination and status",
                labels=(*published, "status"),
            ),
            HistogramMetricFamily(
                f"{p}_published_messages_duration_seconds",
                "Histogram of published messages duration in seconds by broker and destination",
                labels=published,
            ),
            CounterMetricFamily(
                f"{p}_published_messages_exceptions_total",
                "Count of published messages exceptions by broker, destination and exception_type",
                labels=(*published, "exception_type"),
            ),
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples: what the registry checks names against."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        f = self._families()
        with self._lock:
            received = list(self.received.items())
            published = list(self.published.items())
        for labels, r in received:
            f.received.add_metric(labels, r.received)
            f.in_process.add_metric(labels, r.in_process)
            f.processed.add_metric((*labels, "acked"), r.acked)
            f.processed.add_metric((*labels, "error"), r.error)
            r.histogram(f.duration, labels, self.les)
            r.exception_counts(f.exceptions, labels)
        for labels, s in published:
            f.published.add_metric((*labels, "success"), s.success)
            f.published.add_metric((*labels, "error"), s.error)
            s.histogram(f.published_duration, labels, self.les)
            s.exception_counts(f.published_exceptions, labels)
        return iter(f)


class _Families(NamedTuple):
    received: CounterMetricFamily
    in_process: GaugeMetricFamily
    processed: CounterMetricFamily
    duration: HistogramMetricFamily
    exceptions: CounterMetricFamily
    published: CounterMetricFamily
    published_duration: HistogramMetricFamily
    published_exceptions: CounterMetricFamily


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)
_SHARED_LOCK = threading.Lock()


def _metrics(registry: CollectorRegistry, prefix: str, buckets: Sequence[float]) -> _Metrics:
    """The metrics of ``prefix`` in ``registry``, registered by the first middleware."""
    wanted = _Metrics(prefix, buckets)
    with _SHARED_LOCK:
        by_prefix = _SHARED.setdefault(registry, {})
        metrics = by_prefix.get(prefix)
        if metrics is None:
            try:
                registry.register(wanted)
            except ValueError as exc:  # a name some other collector has
                raise ConfigError(f"cannot register the {prefix}_* metrics: {exc}") from exc
            metrics = by_prefix[prefix] = wanted
        elif metrics.bounds != wanted.bounds:
            raise ConfigError(
                f"the {prefix}_* metrics of this registry already have other duration buckets"
            )
    return metrics


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
            kind = type(registry).__name__
            raise ConfigError(f"registry must be a prometheus_client CollectorRegistry, not {kind}")
        if not isinstance(metrics_prefix, str) or not metrics_prefix:
            raise ConfigError("metrics_prefix must be a non-empty string")
        if app_name is not None and not isinstance(app_name, str):
            raise ConfigError(f"app_name must be a string, got {type(app_name).__name__}")
        self.app_name = metrics_prefix if app_name is None else app_name
        self.metrics_prefix = metrics_prefix
        self._metrics = _metrics(registry, metrics_prefix, duration_buckets)
        self._received: dict[tuple[str, str], _Received] = {}
        self._published: dict[tuple[str, str], _Published] = {}

    def _received_series(self, message: Inbound) -> _Received:
        key = (message.transport, message.route)
        series = self._received.get(key)
        if series is None:
            series = self._metrics.received_series((self.app_name, *key))
            self._received[key] = series
        return series

    def _published_series(self, message: Outgoing) -> _Published:
        key = (message.transport, message.route)
        series = self._published.get(key)
        if series is None:
            series = self._metrics.published_series((self.app_name, *key))
            self._published[key] = series
        return series

    # -- server side -----------------------------------------------------------------------

    async def handle(self, message: Inbound, call_next: HandleNext) -> Any:
        series = self._received_series(message)
        series.received += 1
        series.in_process += 1
        started = time.perf_counter()
        try:
            result = await call_next(message)
        except Exception as exc:
            series.in_process -= 1
            series.observe(time.perf_counter() - started)
            series.error += 1
            series.failed(exc)
            raise
        except BaseException:  # cancelled at shutdown: received, never processed
            series.in_process -= 1
            raise
        series.in_process -= 1
        series.observe(time.perf_counter() - started)
        series.acked += 1
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
