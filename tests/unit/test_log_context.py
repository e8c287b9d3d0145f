"""Log records about a message carry its route and correlation id (``polybus_route``,
``polybus_correlation_id``): polybus's own, and a handler's through ``LogContextFilter``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from polybus import Context, LogContextFilter, Microservice, RpcError, create_client, log_fields

app_log = logging.getLogger("tests.log_context")


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog with the filter on its handler, as a user installs it on theirs."""
    log_filter = LogContextFilter()
    caplog.handler.addFilter(log_filter)
    caplog.set_level(logging.INFO)
    yield caplog
    caplog.handler.removeFilter(log_filter)


def fields(record: logging.LogRecord) -> tuple[Any, Any]:
    return record.__dict__.get("polybus_route"), record.__dict__.get("polybus_correlation_id")


async def test_polybus_records_about_a_request_name_its_route_and_id(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No filter installed by the user: polybus's server logger adds the fields itself."""
    app = Microservice(url)
    ids: list[Any] = []

    @app.message_pattern("orders.fail")
    def fail(data: Any, ctx: Context) -> None:
        ids.append(ctx.id)
        raise RuntimeError("boom")

    async with app, create_client(url) as client:
        with pytest.raises(RpcError):
            await client.send("orders.fail", 1)
    [record] = [
        r for r in caplog.records if "handler" in r.getMessage() and "failed" in r.getMessage()
    ]
    assert record.name == "polybus.server"
    assert fields(record) == ("orders.fail", ids[0])
    assert isinstance(ids[0], str) and ids[0]


async def test_a_failing_event_handler_record_names_the_route_and_no_id(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = Microservice(url)
    done = asyncio.Event()

    @app.event_pattern("audit")
    def audit(data: Any) -> None:
        done.set()
        raise RuntimeError("audit down")

    async with app, create_client(url) as client:
        await client.emit("audit", 1)
        await asyncio.wait_for(done.wait(), 5)
    [record] = [r for r in caplog.records if "event handler" in r.getMessage()]
    assert fields(record) == ("audit", None)


async def test_handler_records_and_their_tasks_carry_the_fields_with_the_filter(
    url: str, captured: pytest.LogCaptureFixture
) -> None:
    app = Microservice(url)
    seen: dict[Any, dict[str, Any]] = {}

    @app.message_pattern("work")
    async def work(data: int, ctx: Context) -> int:
        app_log.info("start %s", data)
        await asyncio.sleep(0.01 * (3 - data))  # interleaved with the other requests
        seen[ctx.id] = log_fields()

        async def background() -> None:
            app_log.info("child of %s", data)

        await asyncio.create_task(background())
        app_log.info("end %s", data)
        return data

    async with app, create_client(url) as client:
        assert await asyncio.gather(*(client.send("work", n) for n in range(3))) == [0, 1, 2]
    app_log.info("outside")
    records = [r for r in captured.records if r.name == app_log.name]
    by_data: dict[str, set[tuple[Any, Any]]] = {}
    for record in records:
        by_data.setdefault(str(record.args[0]) if record.args else "-", set()).add(fields(record))
    assert by_data.pop("-") == {(None, None)}
    for data, found in by_data.items():
        [(route, rid)] = found  # start, child and end of one request: the same id
        assert route == "work"
        assert seen[rid] == {"polybus_route": "work", "polybus_correlation_id": rid}, data
    assert len({rid for found in by_data.values() for _, rid in found}) == 3


async def test_fields_passed_in_extra_are_kept(captured: pytest.LogCaptureFixture) -> None:
    app_log.info("explicit", extra={"polybus_route": "mine"})
    [record] = [r for r in captured.records if r.getMessage() == "explicit"]
    assert fields(record) == ("mine", None)
