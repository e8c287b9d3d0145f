"""The fault suite: what every transport must survive, run like the conformance suite.

::

    # test_my_broker_faults.py
    from polybus.testing.faults import *  # noqa: F403

    @pytest.fixture
    def polybus_url() -> str:
        return "redis://127.0.0.1:6379"

The ``faults`` fixture (from the polybus pytest plugin) is a :class:`Faults`: the
conformance harness plus fault injection. Cases:

- ``test_poison_messages_are_dropped``: garbage published straight to the channel,
  subject, queue or topic a server listens on is dropped with a warning, is not
  redelivered forever, and the next valid request is answered;
- ``test_expired_requests_are_skipped``: a request whose caller gave up is not handled;
- ``test_broker_restart_mid_traffic`` (restarts the broker with the command in
  ``POLYBUS_<NAME>_RESTART``, given by whoever runs the suite: :func:`restart_command`):
  requests in flight fail with ``TransportError`` or ``RequestTimeout``, never later than
  their timeout; new requests succeed once the broker is back, with the same client and
  server objects;
- ``test_client_connection_cut``: the client's connections are cut under it (server-side
  abort for TCP, ``CLIENT KILL`` for Redis, ``rabbitmqctl close_connection`` for RabbitMQ,
  a socket shutdown for the others); the client recovers by itself;
- ``test_killed_server_loses_no_durable_event``: a ``polybus run`` server is SIGKILLed
  mid-handler while events keep coming; every event is handled at least once after a new
  server comes up (transports with ``Features.durable_events``).

The cases that restart brokers or kill connections are marked ``faults``: they run under
``POLYBUS_ALLOW_DISRUPTIVE=1`` or when ``-m`` selects ``faults``; otherwise they
skip, so a developer's plain ``pytest`` never restarts a broker others are using. After
each case every broker that answered before it is checked and restarted if it is down.
Timings (broker restart, client recovery) are collected in :data:`FIGURES` and appended
as JSON lines to ``$POLYBUS_FAULT_REPORT`` when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from ..abc import SupportsCleanup
from ..client import ClientProxy
from ..config import create_server_transport, redact_url, resolve_target
from ..errors import PolybusError, RequestTimeout, TransportError
from .brokers import declared_brokers, env_flag, local_url, require, restart_command
from .harness import NOT_APPLICABLE, Conformance
from .injection import Cut, FaultInjection, probe_port

__all__ = [
    "FIGURES",
    "Faults",
    "Outcome",
    "SoakStats",
    "broker_answers",
    "brokers_up",
    "disruptive_allowed",
    "ensure_brokers",
    "injection_of",
    "soak",
    "test_arbitrary_input_never_jams_a_server",
    "test_broker_restart_mid_traffic",
    "test_client_connection_cut",
    "test_expired_requests_are_skipped",
    "test_killed_server_loses_no_durable_event",
    "test_poison_messages_are_dropped",
    "traffic",
]

log = logging.getLogger("polybus.testing.faults")

FIGURES: list[dict[str, Any]] = []
"""Timings measured by the cases: ``{"case", "transport", <figure>: seconds, ...}``."""

RESTART_TIMEOUT = 120.0
"""Longest a restart command may run."""
READY_TIMEOUT = 60.0
"""Longest a broker may take to answer again after its restart command returned."""
RECOVERY_TIMEOUT = 45.0
"""Longest a client may take to succeed again once its broker answers."""
FAULT_CASE_TIMEOUT = 240.0
"""Longest one fault case may run (pytest-timeout must allow more: see the marks)."""
SLACK = 0.75
"""Seconds a failed call may take beyond its timeout (scheduling, a busy machine)."""


# -- outcomes of calls --------------------------------------------------------------------


@dataclass
class Outcome:
    """One call made under a fault: how it ended and how long it took."""

    started: float
    took: float
    timeout: float
    result: str  # "ok", "TransportError", "RequestTimeout", or another exception's name
    error: str = ""

    @property
    def late(self) -> bool:
        return self.took > self.timeout + SLACK


async def timed_call(call: Awaitable[Any], timeout: float) -> Outcome:
    started = time.monotonic()
    try:
        await asyncio.wait_for(_awaitable(call), timeout + 30)  # a hang is reported, not waited
    except TransportError as exc:
        return Outcome(started, time.monotonic() - started, timeout, "TransportError", str(exc))
    except RequestTimeout as exc:
        return Outcome(started, time.monotonic() - started, timeout, "RequestTimeout", str(exc))
    except asyncio.TimeoutError:
        return Outcome(started, time.monotonic() - started, timeout, "hang", "no outcome")
    except Exception as exc:
        return Outcome(started, time.monotonic() - started, timeout, type(exc).__name__, str(exc))
    return Outcome(started, time.monotonic() - started, timeout, "ok")


async def _awaitable(call: Awaitable[Any]) -> Any:
    return await call


@dataclass
class Traffic:
    """Background requests, one every ``interval`` seconds, until stopped."""

    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[Outcome]] = field(default_factory=set)

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        return self.outcomes


def traffic(
    make_call: Callable[[int], Awaitable[Any]], timeout: float, interval: float = 0.05
) -> Traffic:
    """Start calling ``make_call(i)`` every ``interval`` s; each call's outcome is kept."""
    state = Traffic()

    async def run() -> None:
        i = 0
        while not state._stop.is_set():
            task = asyncio.ensure_future(timed_call(make_call(i), timeout))
            state._tasks.add(task)
            task.add_done_callback(lambda t: state.outcomes.append(t.result()))
            i += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state._stop.wait(), interval)

    loop_task = asyncio.ensure_future(run())
    state._tasks.add(loop_task)  # type: ignore[arg-type]
    return state


def _summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    return counts


def _assert_clean_failures(outcomes: Sequence[Outcome], what: str) -> None:
    bad = [o for o in outcomes if o.result not in ("ok", "TransportError", "RequestTimeout")]
    assert not bad, f"{what}: calls ended with other errors: {bad[:5]}"
    late = [o for o in outcomes if o.late]
    assert not late, f"{what}: calls outlived their timeout: {late[:5]}"


# -- soak ---------------------------------------------------------------------------------


@dataclass
class SoakStats:
    """What :func:`soak` saw: outcomes by kind, latencies (s) of successful calls, leaks."""

    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    late: int = 0
    pending_after: int = 0
    rss_growth_kib: int = 0
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "outcomes": dict(self.outcomes),
            "rate_per_s": round(self.calls / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "late": self.late,
            "pending_after": self.pending_after,
            "rss_growth_kib": self.rss_growth_kib,
        }


def _rss_kib() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - non-Unix
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


async def soak(
    client: ClientProxy,
    make_call: Callable[[int], Awaitable[Any]],
    *,
    duration: float,
    concurrency: int = 32,
    max_calls: int = 1_000_000,
    timeout: float = 10.0,
    during: Callable[[], Awaitable[Any]] | None = None,
) -> SoakStats:
    """Keep ``concurrency`` calls in flight for ``duration`` s (at most ``max_calls``).

    ``make_call(i)`` returns the i-th call (e.g. ``client.send(route, i, timeout=...)``);
    ``during`` runs once in the middle (a fault: ``faults.restart_broker``). Every call
    must end with a result, ``TransportError`` or ``RequestTimeout`` within ``timeout``
    plus slack (``late`` counts those that did not). Bounded in time and count, loopback
    only: a benchmark or a soak test calls this with the client it built.
    """
    stats = SoakStats()
    rss_before = _rss_kib()
    started = time.monotonic()
    stop_at = started + duration
    counter = iter(range(max_calls))

    async def worker() -> None:
        for i in counter:
            if time.monotonic() >= stop_at:
                return
            outcome = await timed_call(make_call(i), timeout)
            stats.calls += 1
            stats.outcomes[outcome.result] = stats.outcomes.get(outcome.result, 0) + 1
            if outcome.result == "ok":
                stats.latencies.append(outcome.took)
            if outcome.late:
                stats.late += 1
            if outcome.result != "ok":
                await asyncio.sleep(0.01)  # no hot loop while the transport is down

    async def fault() -> None:
        if during is not None:
            await asyncio.sleep(duration / 2)
            await during()

    await asyncio.gather(fault(), *(worker() for _ in range(concurrency)))
    stats.seconds = time.monotonic() - started
    await asyncio.sleep(0)
    stats.pending_after = client.pending_count
    stats.rss_growth_kib = max(0, _rss_kib() - rss_before)
    return stats


# -- brokers ------------------------------------------------------------------------------


def injection_of(url: str) -> FaultInjection:
    """What the transport of ``url`` offers the fault suite (the defaults if nothing)."""
    plugin, _ = resolve_target(url, {})
    return plugin.faults or FaultInjection()


def _address(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    first = parts.netloc.rsplit("@", 1)[-1].split(",")[0]
    host, _, port = first.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def broker_answers(url: str) -> bool:
    """True when the broker of ``url`` answers its own protocol (not just an open port)."""
    address = _address(url)
    return address is not None and probe_port(*address, injection_of(url))


async def wait_broker(url: str, timeout: float = READY_TIMEOUT) -> float:
    """Wait until the broker answers; the seconds it took. ``AssertionError`` if it never does."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    while True:
        if await loop.run_in_executor(None, broker_answers, url):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the broker at {redact_url(url)} did not answer in {timeout:g}s")
        await asyncio.sleep(0.1)


async def run_command(
    command: Sequence[str], cwd: Path | None = None, timeout: float = RESTART_TIMEOUT
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return -1, f"timed out after {timeout:g}s"
    return proc.returncode or 0, out.decode(errors="replace")


def brokers_up() -> dict[str, str]:
    """Name → URL of every test broker the transports declare
    (:func:`~polybus.testing.brokers.declared_brokers`) that answers."""
    urls = {name: local_url(name) for name in declared_brokers()}
    return {name: url for name, url in urls.items() if broker_answers(url)}


def ensure_brokers(brokers: dict[str, str]) -> list[str]:
    """Bring back every listed broker (name → URL) that does not answer, with its restart
    command; returns the ones restarted. ``AssertionError`` if one stays down: a fault case
    must never leave a broker (shared with other test runs) stopped."""
    restarted = []
    for name, url in brokers.items():
        if broker_answers(url):
            continue
        log.warning("the %s broker is down after a fault case; bringing it back", name)
        command = restart_command(name)
        if command is not None:
            code, out = asyncio.run(run_command(command))
            log.info("%s -> %s %s", " ".join(command), code, out[-500:])
        if not _wait_sync(url, 30):
            raise AssertionError(f"the {name} broker is down and could not be restarted")
        restarted.append(name)
    return restarted


def _wait_sync(url: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if broker_answers(url):
            return True
        time.sleep(0.2)
    return False


# -- our own sockets ----------------------------------------------------------------------


def _socket_fds() -> dict[int, int]:
    """inode → fd of every socket this process holds (Linux)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{entry}")
            if target.startswith("socket:["):
                out[int(target[8:-1])] = int(entry)
    return out


def own_connections(remote_port: int) -> dict[int, int]:
    """fd → local port of this process's TCP connections to ``remote_port`` (Linux)."""
    fds = _socket_fds()
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                if state != "01" or inode not in fds:  # 01: ESTABLISHED
                    continue
                if int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    found[fds[inode]] = int(local.rsplit(":", 1)[1], 16)
    return found


def _shutdown_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


# -- the harness --------------------------------------------------------------------------

SERVER_APP = """
import asyncio
import os

from polybus import Microservice

app = Microservice(name="polybus-fault-server")
LOG = os.environ["POLYBUS_FAULT_LOG"]
PREFIX = os.environ["POLYBUS_FAULT_PREFIX"]
DELAY = float(os.environ.get("POLYBUS_FAULT_DELAY", "0.02"))


def _note(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@app.message_pattern(PREFIX + ".ping")
def ping(data):
    return "pong"


@app.event_pattern(PREFIX + ".work")
async def work(data):
    _note("start " + str(data["id"]))
    await asyncio.sleep(DELAY)
    _note("done " + str(data["id"]))
"""


def _append(path: Path) -> Any:
    return open(path, "ab")  # handed to the child process, which keeps it


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(extra)
    return urlunsplit(parts._replace(query=urlencode(query)))


class Faults(Conformance):
    """The conformance harness with fault injection for one transport URL.

    ``root`` is where restart and recovery commands run (the project root: Kafka's
    restart command is ``bash .ci/kafka.sh ...``).
    """

    def __init__(self, url: str, *, root: Path | None = None, disruptive: bool = True) -> None:
        super().__init__(url)
        self.root = root or Path.cwd()
        self.disruptive = disruptive
        self.name = self.features.name
        self.injection = injection_of(url)
        self.figures: dict[str, Any] = {}

    def run_faults(self, case: Callable[[Faults], Awaitable[None]]) -> None:
        """:meth:`Conformance.run` for a case that uses the fault injection methods."""

        async def main() -> None:
            try:
                await asyncio.wait_for(case(self), FAULT_CASE_TIMEOUT)
            finally:
                await self.aclose()

        asyncio.run(main())

    # -- gating ------------------------------------------------------------------------

    def require_disruptive(self) -> None:
        if not self.disruptive:
            pytest.skip(
                "restarts or disconnects a shared broker: run with "
                "POLYBUS_ALLOW_DISRUPTIVE=1 or -m faults"
            )

    def ensure_broker(self) -> None:
        """Bring this case's broker back if the case left it down."""
        if self.name in declared_brokers():
            ensure_brokers({self.name: self.url})

    def broker_port(self) -> int | None:
        """The broker's port (None where the transport has no broker of its own)."""
        if self.name not in declared_brokers():
            return None
        address = _address(self.url)
        return None if address is None else address[1]

    # -- faults ------------------------------------------------------------------------

    async def restart_broker(self) -> float:
        """Run the broker's restart command and wait until the broker answers again."""
        command = restart_command(self.name)
        if command is None:
            require(f"no restart command for the {self.name} broker: set its POLYBUS_*_RESTART")
            raise AssertionError("unreachable")
        started = time.monotonic()
        code, out = await run_command(command, cwd=self.root)
        if code != 0:
            log.warning("restart command exited %s: %s", code, out[-2000:])
        await wait_broker(self.url)
        took = time.monotonic() - started
        self.figures["broker_restart_s"] = round(took, 2)
        return took

    async def prepare_cut(self, fds: dict[int, int]) -> Cut:
        """How to cut the given connections (fd → local port) of this process: the broker's
        own way where the transport offers one, else a socket shutdown (slow lookups are
        done here, first)."""
        cut = await self.injection.prepare_cut(self.url, set(fds.values())) if fds else None
        if cut is not None:
            return cut

        async def shutdown() -> None:
            for fd in fds:
                _shutdown_fd(fd)

        return "socket shutdown", shutdown

    async def cut_servers(self) -> bool:
        """Cut the connections of servers that are themselves the broker (TCP)."""
        cut = False
        for app in self._servers:
            cut = await self.injection.cut_server(app.transport) or cut
        return cut

    async def inject(self, route: str, payloads: Sequence[bytes]) -> None:
        """Deliver raw bytes where the server listens for ``route``, bypassing polybus."""
        try:
            await self.injection.inject(self._client_url, route, payloads, self._isolation)
        except NotImplementedError:
            pytest.skip(f"{NOT_APPLICABLE}{self.name} offers no raw publisher (FaultInjection)")

    async def queue_depth(self) -> int | None:
        """Messages still queued for the service (None where there is no queue)."""
        return await self.injection.queue_depth(self.url, self._isolation)

    def durable_urls(self) -> tuple[str, str]:
        """Server and client URLs with the isolation and ``Features.durable_options``."""
        options = {**self._isolation, **self.features.durable_options}
        url = _with_query(self.url, {k: str(v).lower() for k, v in options.items()})
        return url, url

    # -- server processes -----------------------------------------------------------------

    async def spawn_server(self, url: str, workdir: Path, env: dict[str, str]) -> Any:
        app_file = workdir / "polybus_fault_app.py"
        if not app_file.exists():
            app_file.write_text(textwrap.dedent(SERVER_APP))
        script = Path(sys.executable).with_name("polybus")
        command = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from polybus.cli import main; main()"]
        )
        return await asyncio.create_subprocess_exec(
            *command,
            "run",
            "polybus_fault_app:app",
            "--url",
            url,
            cwd=workdir,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=_append(workdir / "server.log"),
        )

    def record(self, case: str, **figures: Any) -> None:
        entry = {"case": case, "transport": self.name, **self.figures, **figures}
        FIGURES.append(entry)
        path = os.environ.get("POLYBUS_FAULT_REPORT")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(entry) + "\n")
        log.warning("fault figures: %s", entry)


async def _recover(client: ClientProxy, call: Callable[[], Awaitable[Any]]) -> float:
    """Seconds until ``call()`` succeeds again (bounded by RECOVERY_TIMEOUT)."""
    started = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - started < RECOVERY_TIMEOUT:
        try:
            await call()
            return time.monotonic() - started
        except (PolybusError, asyncio.TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.05)
    raise AssertionError(
        f"no successful call within {RECOVERY_TIMEOUT:g}s of the fault; last error: {last!r}"
    )


# -- cases --------------------------------------------------------------------------------

POISON: list[bytes] = [
    b"\x00\xff\xfe garbage",
    b"\xff\xfe\xfd",  # invalid UTF-8
    b'{"pattern": "x", "data": ',  # truncated JSON
    b"not json at all",
    b"[1, 2, 3]",  # JSON of the wrong shape
    b"null",
    b'{"id": 42}',
    b'{"pattern": null, "data": 1, "id": "p1"}',
]
POISON_LIMIT = 64 * 1024


def test_poison_messages_are_dropped(faults: Faults) -> None:
    """Garbage on the server's own channel is dropped, once, and the server keeps serving."""

    async def case(f: Faults) -> None:
        # with the durable options (RabbitMQ: acks) poison must be rejected, not requeued
        await f.server(max_message_bytes=POISON_LIMIT, **f.features.durable_options)
        client = f.client()
        assert await client.send(f.routes.echo, "before") == "before"
        warnings = _CountWarnings()
        logging.getLogger("polybus").addHandler(warnings)
        try:
            payloads = [*POISON, b'{"pattern":"x","data":"' + b"x" * (2 * POISON_LIMIT) + b'"}']
            await f.inject(f.routes.echo, payloads)
            for i in range(3):
                assert await client.send(f.routes.echo, f"after {i}", timeout=15) == f"after {i}"
            await asyncio.sleep(1.0)
            settled = warnings.count
            await asyncio.sleep(1.5)
            assert warnings.count == settled, "poison messages keep coming back (redelivered)"
            depth = await f.queue_depth()
            assert depth in (None, 0), f"{depth} poison messages still queued"
            assert await client.send(f.routes.echo, "still serving") == "still serving"
        finally:
            logging.getLogger("polybus").removeHandler(warnings)

    faults.run_faults(case)


_RECURSION_LIMIT = sys.getrecursionlimit()


def test_arbitrary_input_never_jams_a_server(faults: Faults) -> None:
    """Property: whatever arrives where a server listens — any bytes, any JSON, envelopes
    with any pattern, id and data, patterns nested up to 1,500 deep — the server keeps serving, a
    well-formed request sent right after is answered, and no message is left unsettled
    (with the durable options: what a server leaves unacked goes back to its queue when it
    closes, and the queue must then be empty)."""
    pytest.importorskip("hypothesis")
    import hypothesis
    from hypothesis import strategies as st

    def deep(depth: int) -> bytes:
        """A request whose pattern is nested ``depth`` deep (written out: no encoder nests
        that far)."""
        pattern = b'{"cmd":' * depth + b'"x"' + b"}" * depth
        return b'{"pattern":' + pattern + b',"data":1,"id":"deep-%d"}' % depth

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
        max_leaves=25,
    )
    envelopes = st.fixed_dictionaries(
        {"pattern": json_values, "data": json_values},
        optional={"id": json_values, "metadata": json_values},
    )
    payloads = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        envelopes.map(lambda v: json.dumps(v).encode()),
        st.integers(0, 1500).map(deep),
        st.sampled_from([deep(990), deep(1000), deep(1023), deep(1025)]),
    )
    # Records are formatted as an application's log handler formats them: a failure to
    # format one (a %r of a 1,000-deep pattern) must not cost its message its settling.
    formatting = logging.StreamHandler(io.StringIO())
    logging.getLogger("polybus").addHandler(formatting)
    loop = asyncio.new_event_loop()
    try:

        async def start() -> ClientProxy:
            await faults.server(**faults.features.durable_options)
            client = faults.client()
            assert await client.send(faults.routes.echo, "before") == "before"
            return client

        client = loop.run_until_complete(asyncio.wait_for(start(), 60))
        counter = iter(range(1_000_000))

        @hypothesis.settings(
            max_examples=int(os.environ.get("POLYBUS_FUZZ_EXAMPLES", "40")),
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(payload=payloads)
        def one_message(payload: bytes) -> None:
            token = f"after-{next(counter)}"

            async def probe() -> Any:
                await faults.inject(faults.routes.echo, [payload])
                return await client.send(faults.routes.echo, token, timeout=10)

            # hypothesis raises the recursion limit while a test runs; the server is to meet
            # the payload under the interpreter's own limit, as it does in production
            raised = sys.getrecursionlimit()
            sys.setrecursionlimit(_RECURSION_LIMIT)
            try:
                answer = loop.run_until_complete(probe())
            finally:
                sys.setrecursionlimit(raised)
            assert answer == token

        one_message()

        async def finish() -> int | None:
            for app in faults._servers:
                await app.close(grace=5)
            return await faults.queue_depth()

        depth = loop.run_until_complete(finish())
        assert depth in (None, 0), f"{depth} messages left unsettled, back in the queue"
    finally:
        logging.getLogger("polybus").removeHandler(formatting)
        loop.run_until_complete(faults.aclose())
        loop.close()


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def test_expired_requests_are_skipped(faults: Faults) -> None:
    """A request still queued when its caller's timeout passes is never handled."""
    reason = faults.features.notes.get("deadline")
    if reason:
        pytest.skip(f"{NOT_APPLICABLE}declared for {faults.name}: {reason}")

    async def case(f: Faults) -> None:
        await f.server(max_concurrency=1)
        client = f.client()
        token = uuid.uuid4().hex
        busy = asyncio.ensure_future(client.send(f.routes.slow, 1.5, timeout=20))
        await asyncio.sleep(0.3)
        with pytest.raises(RequestTimeout):
            await client.send(f.routes.count, token, timeout=0.4)
        assert await busy == "late"
        await asyncio.sleep(0.5)
        assert await client.send(f.routes.count, token, timeout=10) == 1, (
            "the server ran a request whose caller had already given up: "
            "the transport must carry the deadline (x-polybus-deadline) to Context.deadline"
        )

    faults.run_faults(case)


@pytest.mark.faults
@pytest.mark.timeout(FAULT_CASE_TIMEOUT + 60)
def test_broker_restart_mid_traffic(faults: Faults) -> None:
    """Restart the broker under load: no call hangs, and the same objects work afterwards."""
    if faults.name not in declared_brokers():
        pytest.skip(f"{NOT_APPLICABLE}{faults.name} has no broker to restart")
    faults.require_disruptive()

    async def case(f: Faults) -> None:
        await f.server()
        client = f.client()
        assert await client.send(f.routes.echo, "warm") == "warm"
        timeout = 8.0
        slow = [
            asyncio.ensure_future(
                timed_call(client.send(f.routes.slow, 4, timeout=timeout), timeout)
            )
            for _ in range(5)
        ]
        load = traffic(lambda i: client.send(f.routes.echo, i, timeout=3), 3.0, interval=0.05)
        await asyncio.sleep(0.5)
        took = await f.restart_broker()
        recovery = await _recover(client, lambda: client.send(f.routes.echo, "back", timeout=3))
        outcomes = await load.stop()
        in_flight = await asyncio.gather(*slow)
        _assert_clean_failures(in_flight, "requests in flight during the restart")
        _assert_clean_failures(outcomes, "requests sent around the restart")
        for _ in range(20):  # steady again, same client and server objects
            assert await client.send(f.routes.echo, "steady", timeout=10) == "steady"
        token = uuid.uuid4().hex
        await client.emit(f.routes.event, {"token": token, "n": 1})
        got = await f.eventually(
            lambda: client.send(f.routes.events, token), lambda v: len(v) >= 2, timeout=15
        )
        assert len(got) >= 2, "events are not delivered after the restart"
        f.record(
            "broker_restart",
            restart_command_s=round(took, 2),
            client_recovery_after_broker_s=round(recovery, 2),
            in_flight=_summary(in_flight),
            traffic=_summary(outcomes),
        )

    try:
        faults.run_faults(case)
    finally:
        faults.ensure_broker()


@pytest.mark.faults
@pytest.mark.timeout(FAULT_CASE_TIMEOUT + 60)
def test_client_connection_cut(faults: Faults) -> None:
    """Cut the client's own connections: its calls fail or finish, then it recovers alone."""
    faults.require_disruptive()
    port = faults.broker_port()  # None: the server is the broker (TCP), it cuts
    if port is not None and not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to find this client's connections")

    async def case(f: Faults) -> None:
        await f.server()
        before = own_connections(port) if port else {}
        client = f.client()
        await client.connect()
        assert await client.send(f.routes.echo, "warm") == "warm"
        mine = {
            fd: p for fd, p in (own_connections(port) if port else {}).items() if fd not in before
        }
        cut: Callable[[], Awaitable[None]]
        if port is None:

            async def server_cut() -> None:
                if not await f.cut_servers():
                    pytest.skip(f"{NOT_APPLICABLE}{f.name} has no broker and no server cut")

            method, cut = "server-side abort", server_cut
        else:
            assert mine, "found no connection of the client to cut"
            method, cut = await f.prepare_cut(mine)
        changes: list[float] = []
        client.watch_status(lambda status: changes.append(time.monotonic()))
        timeout = 8.0
        pending = asyncio.ensure_future(
            timed_call(client.send(f.routes.slow, 5, timeout=timeout), timeout)
        )
        await asyncio.sleep(0.3)
        cut_started = time.monotonic()
        await cut()
        recovery = await _recover(client, lambda: client.send(f.routes.echo, "back", timeout=3))
        recovered = time.monotonic()
        # The cut happened when the client noticed it (an admin command takes a while).
        cut_at = min([t for t in changes if t >= cut_started] or [recovered - recovery])
        outcome = await pending
        _assert_clean_failures([outcome], "the request in flight when the connection was cut")
        for _ in range(10):
            assert await client.send(f.routes.echo, "steady", timeout=10) == "steady"
        f.record(
            "connection_cut",
            method=method,
            connections_cut=len(mine),
            client_recovery_s=round(recovered - cut_at, 2),
            client_noticed=bool(changes),
            in_flight=outcome.result,
            in_flight_ended_after_cut_s=round(outcome.started + outcome.took - cut_at, 2),
        )

    try:
        faults.run_faults(case)
    finally:
        faults.ensure_broker()


@pytest.mark.faults
@pytest.mark.timeout(FAULT_CASE_TIMEOUT + 60)
def test_killed_server_loses_no_durable_event(faults: Faults) -> None:
    """SIGKILL a ``polybus run`` server mid-handler: every event is handled at least once."""
    if not faults.features.durable_events:
        pytest.skip(f"{NOT_APPLICABLE}{faults.name} does not keep events (durable_events=False)")
    faults.require_disruptive()

    async def case(f: Faults) -> None:
        server_url, client_url = f.durable_urls()
        workdir = Path(tempfile.mkdtemp(prefix="polybus-faults-"))
        handled_log = workdir / "handled.log"
        env = {"POLYBUS_FAULT_LOG": str(handled_log), "POLYBUS_FAULT_PREFIX": f.routes.prefix}
        from ..registry import create_client

        client = create_client(client_url, timeout=10)
        f._clients.append(client)
        first = await f.spawn_server(server_url, workdir, env)
        second = None
        total, kill_after = 300, 60
        try:
            t0 = time.monotonic()
            await _recover(client, lambda: client.send(f"{f.routes.prefix}.ping", None, timeout=3))
            first_ready = time.monotonic() - t0
            ids = [f"{f.token}-{i}" for i in range(total)]

            async def publish(batch: Sequence[str]) -> None:
                await asyncio.gather(
                    *(client.emit(f"{f.routes.prefix}.work", {"id": i}) for i in batch)
                )

            await publish(ids[:150])
            end = time.monotonic() + 60
            while len(_handled(handled_log)[1]) < kill_after:
                if time.monotonic() > end:
                    break
                await asyncio.sleep(0.02)
            started, done = _handled(handled_log)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            mid_handler = len(started - done)
            await publish(ids[150:])  # published while no server runs
            second = await f.spawn_server(server_url, workdir, env)
            restarted = time.monotonic()
            end = restarted + 120
            while time.monotonic() < end:
                handled_ids = _handled_ids(handled_log)
                if handled_ids.issuperset(ids):
                    break
                await asyncio.sleep(0.2)
            caught_up = time.monotonic() - restarted
            handled_ids = _handled_ids(handled_log)
            missing = sorted(set(ids) - handled_ids)
            assert not missing, (
                f"{len(missing)} of {total} events never handled after the crash "
                f"(e.g. {missing[:5]}); server log: {workdir / 'server.log'}"
            )
            counts = _done_counts(handled_log)
            f.record(
                "server_sigkill",
                events=total,
                handled_before_kill=len(done),
                mid_handler_at_kill=mid_handler,
                redelivered_duplicates=sum(c - 1 for c in counts.values() if c > 1),
                first_server_ready_s=round(first_ready, 2),
                second_server_caught_up_s=round(caught_up, 2),
            )
        finally:
            for proc in (first, second):
                if proc is not None and proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 15)
                    except asyncio.TimeoutError:
                        proc.kill()
                        await proc.wait()
            transport = create_server_transport(server_url)
            if isinstance(transport, SupportsCleanup):
                with contextlib.suppress(Exception):
                    await transport.delete_resources()

    try:
        faults.run_faults(case)
    finally:
        faults.ensure_broker()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _handled(path: Path) -> tuple[set[str], set[str]]:
    started: set[str] = set()
    done: set[str] = set()
    for line in _lines(path):
        kind, _, rid = line.partition(" ")
        (started if kind == "start" else done).add(rid)
    return started, done


def _handled_ids(path: Path) -> set[str]:
    return _handled(path)[1]


def _done_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in _lines(path):
        kind, _, rid = line.partition(" ")
        if kind == "done":
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def disruptive_allowed(config: pytest.Config) -> bool:
    """Fault cases that restart shared brokers run with POLYBUS_ALLOW_DISRUPTIVE=1 or -m faults."""
    if env_flag("POLYBUS_ALLOW_DISRUPTIVE"):
        return True
    markexpr = str(config.getoption("-m", default="") or "")
    return "faults" in markexpr and "not faults" not in markexpr
