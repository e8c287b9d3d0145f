"""Under CI=true a skipped broker test is a failure, unless its transport's declared
features make it not applicable (those skips say so: ``not applicable: ...``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from polybus.testing.brokers import in_ci
from polybus.testing.harness import NOT_APPLICABLE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[Any]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and in_ci() and item.path.parent.name == "integration"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    if NOT_APPLICABLE in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true (broker tests must run): {reason}"
