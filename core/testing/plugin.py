"""pytest plugin of polybus (registered through the ``pytest11`` entry point).

Options: ``--polybus-url URL`` (the transport the conformance cases run against) and
``--polybus-external`` (a conformance service already runs there). Fixtures:
``polybus_url``, ``conformance`` and ``faults`` (the fault suite's harness); marker
``faults`` (cases that restart brokers, cut connections or kill processes).
"""

from __future__ import annotations

import pytest

from .brokers import require
from .faults import Faults, disruptive_allowed
from .harness import Conformance, external_default


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: restarts brokers, cuts connections or kills processes (polybus.testing.faults)",
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("polybus")
    group.addoption("--polybus-url", default=None, help="transport URL for the conformance suite")
    group.addoption(
        "--polybus-external",
        action="store_true",
        default=external_default(),
        help="use the conformance service already running at --polybus-url",
    )


@pytest.fixture
def polybus_url(request: pytest.FixtureRequest) -> str:
    url = request.config.getoption("--polybus-url")
    if not url:
        pytest.skip("no --polybus-url given")
    return str(url)


@pytest.fixture
def conformance(request: pytest.FixtureRequest, polybus_url: str) -> Conformance:
    return Conformance(polybus_url, external=bool(request.config.getoption("--polybus-external")))


@pytest.fixture
def faults(request: pytest.FixtureRequest, polybus_url: str) -> Faults:
    from ..errors import ConfigError

    try:
        return Faults(
            polybus_url,
            root=request.config.rootpath,
            disruptive=disruptive_allowed(request.config),
        )
    except ConfigError as exc:
        require(f"cannot use {polybus_url.split('://')[0]}:// for the fault suite: {exc}")
        raise
