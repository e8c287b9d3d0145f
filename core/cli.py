"""The ``polybus`` command: ``demo``, ``run``, ``asyncapi`` and ``conformance``."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from .config import ENV_URL, redact_url
from .errors import PolybusError

if TYPE_CHECKING:
    from .server import Microservice

__all__ = ["main"]


def _use_uvloop(enabled: bool) -> None:
    if not enabled:
        return
    try:
        import uvloop
    except ImportError as exc:
        raise click.ClickException("uvloop is not installed: pip install polybus[uvloop]") from exc
    uvloop.install()


@click.group()
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
@click.option("--uvloop/--no-uvloop", default=False, help="Run on uvloop.")
def main(log_level: str, uvloop: bool) -> None:
    """polybus: NestJS-compatible microservice messaging for Python."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _use_uvloop(uvloop)


@main.command()
@click.option(
    "--url", default=None, help="Transport URL (default: TCP on loopback, no broker needed)."
)
def demo(url: str | None) -> None:
    """Run the orders/billing example and print the invoice."""
    from .demo import DEFAULT_URL, run_demo

    try:
        invoice = asyncio.run(run_demo(url or DEFAULT_URL))
    except PolybusError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    click.echo(orjson.dumps(invoice).decode())


@main.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("--url", default=None, help=f"Transport URL (default: ${ENV_URL}).")
def run(app_path: str, url: str | None) -> None:
    """Serve the Microservice MODULE:APP until SIGINT/SIGTERM."""
    if url:
        os.environ[ENV_URL] = url
    app = _load_microservice(app_path)
    where = redact_url(url or os.environ.get(ENV_URL, ""))
    click.echo(f"serving {app_path} on {where}", err=True)
    try:
        asyncio.run(app.run())
    except PolybusError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def _load_microservice(app_path: str) -> Microservice:
    """The ``Microservice`` named by ``module:attr`` (``attr`` defaults to ``app``)."""
    from .server import Microservice

    module_name, _, attr = app_path.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        app = getattr(importlib.import_module(module_name), attr or "app")
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load {app_path}: {exc}") from exc
    if not isinstance(app, Microservice):
        raise click.ClickException(f"{app_path} is not a polybus.Microservice")
    return app


@main.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("--url", default=None, help=f"Transport URL of the server (default: ${ENV_URL}).")
@click.option("--title", default=None, help="Document title (default: the service's name).")
@click.option("--version", "doc_version", default="1.0.0", show_default=True)
def asyncapi(app_path: str, url: str | None, title: str | None, doc_version: str) -> None:
    """Print the AsyncAPI 3.0 document (JSON) of the Microservice MODULE:APP."""
    from .asyncapi import build_document

    app = _load_microservice(app_path)
    document = build_document(
        app, url=url or os.environ.get(ENV_URL), title=title, version=doc_version
    )
    click.echo(orjson.dumps(document, default=str, option=orjson.OPT_INDENT_2).decode())


class _Collector:
    """pytest plugin object recording each case's outcome for the summary table."""

    def __init__(self) -> None:
        self.rows: dict[str, list[str]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        name = report.nodeid.split("::")[-1]
        if report.when == "call" or report.outcome != "passed":
            reason = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            elif report.failed:
                reason = str(getattr(report.longrepr, "reprcrash", None) or "").splitlines()[0][
                    :100
                ]
            self.rows[name] = [report.outcome, reason]


@main.command()
@click.argument("url")
@click.option("--external", is_flag=True, help="A conformance service already runs at URL.")
@click.option("-k", "keyword", default=None, help="Only cases matching this pytest -k expression.")
def conformance(url: str, external: bool, keyword: str | None) -> None:
    """Run the conformance suite against URL and print a pass/skip/fail table."""
    try:
        import pytest
    except ImportError as exc:
        raise click.ClickException(
            "the conformance suite needs pytest: pip install pytest"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="polybus-conformance-") as workdir:
        # A one-line test module importing the shipped cases by their package name, so
        # they run against the installed polybus whatever the install layout.
        cases = Path(workdir) / "test_polybus_conformance.py"
        cases.write_text("from polybus.testing.conformance import *  # noqa: F403\n")
        args = [
            str(cases),
            "--rootdir",
            workdir,
            "--polybus-url",
            url,
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "polybus.testing.plugin",
            # the cases run their own event loops: pytest-asyncio, if installed, has nothing
            # to do here but to print its configuration warning before the table
            "-p",
            "no:asyncio",
        ]
        if external:
            args.append("--polybus-external")
        if keyword:
            args += ["-k", keyword]
        collector = _Collector()
        code = pytest.main(args, plugins=[collector])
    width = max((len(n) for n in collector.rows), default=10)
    click.echo(f"\nconformance of {redact_url(url)}\n")
    click.echo(f"{'case':<{width}}  outcome  note")
    for name, (outcome, reason) in collector.rows.items():
        click.echo(f"{name:<{width}}  {outcome:<7}  {reason}")
    counts = {
        o: sum(1 for r in collector.rows.values() if r[0] == o)
        for o in ("passed", "skipped", "failed")
    }
    click.echo(
        f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    sys.exit(int(code))


if __name__ == "__main__":  # pragma: no cover
    main()
