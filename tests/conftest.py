"""With POLYBUS_REQUIRE_BROKERS=1 (polybus's CI) a skipped broker test is a failure, unless
its transport's declared features make it not applicable (those skips say so:
``not applicable: ...``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from polybus.testing.brokers import brokers_required
from polybus.testing.harness import NOT_APPLICABLE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[Any]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and brokers_required() and item.path.parent.name == "integration"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    if NOT_APPLICABLE in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped with POLYBUS_REQUIRE_BROKERS=1 (broker tests must run): {reason}"
