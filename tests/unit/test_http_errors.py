"""How polybus.fastapi maps polybus errors to HTTP statuses and bodies."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from polybus import (
    NoRespondersError,
    ProtocolError,
    RequestTimeout,
    RpcError,
    TransportError,
)
from polybus.fastapi import error_body, http_status


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"status": 404, "message": "no order"}, 404),
        ({"statusCode": 409, "message": "taken"}, 409),
        ({"status": "error", "statusCode": 422}, 422),  # NestJS's "error" status is no code
        ({"status": "error", "message": "Internal server error"}, 502),
        ({"status": 200}, 502),  # not an error status
        ({"status": 600}, 502),
        ({"status": True}, 502),
        ({"status": "404"}, 502),
        ("There is no matching message handler defined in the remote service.", 502),
        ([404], 502),
    ],
)
def test_an_rpc_error_asks_for_its_status_or_is_a_bad_gateway(payload: Any, status: int) -> None:
    error = RpcError(payload)
    assert http_status(error) == status
    assert error_body(error) == {"statusCode": status, "message": str(error), "error": payload}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RequestTimeout("no reply within 0.2s"), 504),
        (NoRespondersError("nobody on billing"), 503),
        (TransportError("cannot connect to 10.1.2.3:4222"), 503),
        (ProtocolError("frame too large"), 502),
    ],
)
def test_transport_errors_name_only_their_type(error: Exception, status: int) -> None:
    body = error_body(error)
    assert http_status(error) == body["statusCode"] == status
    assert body["error"] == type(error).__name__
    assert str(error) not in str(body)


def test_importing_polybus_loads_neither_fastapi_nor_the_asyncapi_builder() -> None:
    code = (
        "import sys, polybus, polybus.cli\n"
        "optional = {'fastapi', 'uvicorn', 'polybus.fastapi', 'polybus.asyncapi'}\n"
        "loaded = optional & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
