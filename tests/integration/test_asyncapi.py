"""``polybus asyncapi``: documents the reference AsyncAPI parser accepts (official 3.0 schema).

The validator is tests/integration/asyncapi/validate.mjs (@asyncapi/parser, installed by
``npm ci`` there, as .ci/test does).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from polybus import Microservice
from polybus.asyncapi import build_document
from polybus.testing.brokers import require

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Path(__file__).parent / "asyncapi"


def validate(document: dict[str, Any]) -> dict[str, Any]:
    """The reference parser's verdict on ``document``: ``{"valid", "diagnostics", ...}``."""
    if shutil.which("node") is None or not (VALIDATOR / "node_modules").is_dir():
        require("AsyncAPI validator: needs node and `npm ci` in tests/integration/asyncapi")
    result = subprocess.run(
        ["node", "validate.mjs"],
        cwd=VALIDATOR,
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    verdict: dict[str, Any] = json.loads(result.stdout)
    return verdict


def errors(verdict: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in verdict["diagnostics"] if d["severity"] == "error"]


def asyncapi(app: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "polybus.cli", "asyncapi", app, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_the_conformance_service_is_a_valid_asyncapi_3_document() -> None:
    from polybus.testing.app import app

    document = asyncapi("polybus.testing.app:app", "--url", "nats://127.0.0.1:4222")
    verdict = validate(document)
    assert verdict["valid"] and verdict["version"] == "3.0.0", errors(verdict)
    operations = document["operations"]
    routes = {handler.route for handler in app.handlers}
    assert len(operations) == len(routes)
    replies = {name for name, op in operations.items() if "reply" in op}
    assert replies == {name for name in operations if name.startswith("message_")}
    assert document["servers"] == {"default": {"host": "127.0.0.1:4222", "protocol": "nats"}}
    stream = document["channels"]["conformance.stream.reply"]["messages"]["reply"]
    assert stream["payload"] == {"type": "integer"}  # the items of AsyncIterator[int]
    charge = document["channels"]["conformance.charge"]["messages"]["request"]
    assert charge["payload"] == {"$ref": "#/components/schemas/Charge"}
    assert set(document["components"]["schemas"]["Charge"]["properties"]) == {
        "order_id",
        "amount",
    }


def test_the_billing_example_is_valid_and_its_url_credentials_are_left_out() -> None:
    url = "amqp://billing-user:s3cret-pw@127.0.0.1:5672/orders?queue=billing&password=q5ecret"
    result = subprocess.run(
        [sys.executable, "-m", "polybus.cli", "asyncapi", "examples.billing:app", "--url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for secret in ("billing-user", "s3cret-pw", "q5ecret"):
        assert secret not in result.stdout + result.stderr
    document = json.loads(result.stdout)
    verdict = validate(document)
    assert verdict["valid"], errors(verdict)
    assert document["servers"]["default"] == {
        "host": "127.0.0.1:5672",
        "protocol": "amqp",
        "pathname": "/orders",
    }
    charge = document["channels"]["cmd_charge"]
    assert charge["address"] is None  # an object pattern: its braces are no address
    assert charge["x-polybus-pattern"] == {"cmd": "charge"}
    schemas = document["components"]["schemas"]
    assert set(schemas["ChargeRequest"]["required"]) == {"orderId", "amount"}
    assert set(schemas["Invoice"]["required"]) == {"id", "amount", "status"}
    placed = document["operations"]["event_order_placed"]
    assert "reply" not in placed
    assert document["channels"]["order_placed"]["address"] == "order_placed"


def test_the_validator_rejects_a_broken_document() -> None:
    document = asyncapi("examples.billing:app")
    del document["info"]["version"]
    document["operations"]["message_cmd_charge"]["action"] = "answer"
    verdict = validate(document)
    assert not verdict["valid"]
    assert len(errors(verdict)) >= 2


def test_an_app_that_is_not_a_microservice_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polybus.cli", "asyncapi", "examples.orders_http:app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "is not a polybus.Microservice" in result.stderr


class Opaque:
    """A type pydantic has no schema for."""


def odd_service() -> Microservice:
    """Handlers of every shape a document must still describe validly."""
    app = Microservice(name="odd")

    @app.message_pattern("a/b~c")  # characters a JSON pointer must escape
    def slashes(data):  # type: ignore[no-untyped-def]
        return data

    @app.message_pattern("a_b_c")  # sanitizes to the same id as the one above
    def numbers() -> Iterator[int]:
        yield from range(3)

    @app.message_pattern({"cmd": "opaque", "v": 2})
    def opaque(data: int) -> Opaque:
        return Opaque()

    @app.message_pattern("callable")
    def callable_reply(data: int) -> Callable[[], None]:
        return lambda: None

    @app.message_pattern("both")
    def both(data: list[int]) -> None:
        """Answers requests on a route that also carries events."""

    @app.event_pattern("both")
    def also(data: str) -> None: ...

    @app.event_pattern("twice")
    def first(data: dict[str, int]) -> None: ...

    @app.event_pattern("twice")
    def second(data: dict[str, int]) -> None: ...

    return app


def test_handlers_of_every_shape_give_a_valid_document() -> None:
    document = build_document(odd_service(), url="kafka://127.0.0.1:19092")
    verdict = validate(document)
    assert verdict["valid"], errors(verdict)
    assert set(document["operations"]) == {
        "message_a_b_c",
        "message_a_b_c_2",
        "message_cmd_opaque_v_2",
        "message_callable",
        "message_both",
        "event_both",
        "event_twice",
    }
    channels = document["channels"]
    assert channels["a_b_c"]["address"] == "a/b~c"
    assert channels["a_b_c_2.reply"]["messages"]["reply"]["payload"] == {"type": "integer"}
    for name in ("cmd_opaque_v_2.reply", "callable.reply"):
        payload = channels[name]["messages"]["reply"]["payload"]
        assert payload["description"].startswith("no JSON schema for"), name
    reply = channels["both.reply"]["messages"]["reply"]
    assert reply["payload"] == {"type": "null"}
    assert document["operations"]["message_both"]["summary"].startswith("Answers requests")
    both = channels["both"]["messages"]
    assert both["request"]["payload"] == {"items": {"type": "integer"}, "type": "array"}
    assert both["event"]["payload"] == {"type": "string"}
