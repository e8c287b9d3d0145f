"""The transport seam: transports are found through their declarations, core knows none of
them, and polybus stays out of the pytest runs of projects that merely install it."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polybus import ConfigError, TransportSpec, create_client, register_transport
from polybus.config import resolve_target
from polybus.plugins import find_by_nest_name, find_by_scheme, transport_specs
from polybus.testing.brokers import declared_brokers

ROOT = Path(__file__).resolve().parents[2]

BROKER_LIBRARIES = {"redis", "hiredis", "nats", "aio_pika", "aiormq", "pamqp", "aiokafka"}
BROKER_LIBRARIES |= {"kafka", "aiomqtt", "paho", "gmqtt"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_no_file_under_core_imports_a_broker_library() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_modules(path) & BROKER_LIBRARIES)
        for path in (ROOT / "core").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _sibling_imports(path: Path, siblings: set[str]) -> set[str]:
    """The modules of ``path``'s own package that it imports (``from ._x import …``,
    ``from . import _x``), at run time or for type checking alike."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & siblings - {path.stem}


def _a_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (module → modules it imports), or ``[]``."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        for imported in sorted(graph[module]):
            if imported in path:
                return [*path[path.index(imported) :], imported]
            if imported not in done:
                cycle = visit(imported, [*path, imported])
                if cycle:
                    return cycle
        done.add(module)
        return []

    for module in sorted(graph):
        cycle = [] if module in done else visit(module, [module])
        if cycle:
            return cycle
    return []


def test_no_transport_package_has_an_import_cycle() -> None:
    """An adapter's modules import each other one way only (Kafka's context and server once
    imported each other and set each other's private attributes)."""
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    packages = [p for p in sorted((ROOT / "transports").iterdir()) if (p / "__init__.py").exists()]
    assert len(packages) >= 6
    cycles = {}
    for package in packages:
        modules = {path.stem: path for path in package.glob("*.py")}
        graph = {name: _sibling_imports(path, set(modules)) for name, path in modules.items()}
        cycles[package.name] = _a_cycle(graph)
    assert {name: cycle for name, cycle in cycles.items() if cycle} == {}


def test_core_names_no_transport() -> None:
    """Core keeps no list of transports: no scheme table, no NestJS name table, and the
    test kit no table of brokers (each transport declares its own ``test_broker``)."""
    text = "\n".join(p.read_text() for p in (ROOT / "core").rglob("*.py"))
    needles = ('"amqp"', '"kafka":', '"RMQ"', "polybus.transports.redis", "POLYBUS_REDIS_URL")
    for needle in (*needles, "POLYBUS_NATS_URL", "rabbitmq:3", "eclipse-mosquitto"):
        assert needle not in text, needle


def test_transports_declare_their_test_brokers() -> None:
    declared = declared_brokers()
    assert {"redis", "nats", "rabbitmq", "kafka", "mqtt"} <= set(declared)
    assert declared["rabbitmq"].env == "POLYBUS_AMQP_URL"
    assert "tcp" not in declared and "memory" not in declared  # no broker of their own


def test_builtin_transports_are_declared_like_any_other() -> None:
    names = {spec.name for spec in transport_specs()}
    assert {"memory", "tcp", "redis", "nats", "rabbitmq", "kafka"} <= names
    assert find_by_scheme("amqps").name == "rabbitmq"
    assert find_by_nest_name("RMQ") is find_by_nest_name(5) is find_by_scheme("amqp")


def test_declarations_import_no_client_library() -> None:
    code = (
        "import sys, polybus.plugins as p; p.transport_specs(); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BROKER_LIBRARIES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_scheme_and_name_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known schemes: .*amqp"):
        create_client("nope://x")
    with pytest.raises(ConfigError, match=r"known: .*RMQ"):
        create_client({"transport": "NOPE"})


def test_a_declaration_whose_library_is_missing_names_its_extra() -> None:
    register_transport(
        TransportSpec(
            name="absent",
            schemes=("absent",),
            implementation="polybus_absent_library._plugin:PLUGIN",
            extra="absent",
        )
    )
    with pytest.raises(ConfigError, match=r"pip install polybus\[absent\]"):
        create_client("absent://x")


def test_a_transport_from_another_distribution_is_found_by_scheme_and_nest_dict() -> None:
    """tests/plugins/loopback, installed as its own distribution (.ci/test)."""
    by_url, _ = resolve_target("loopback://x", {})
    by_name, _ = resolve_target({"transport": "LOOPBACK", "options": {"name": "x"}}, {})
    by_number, _ = resolve_target({"transport": 42}, {})
    assert by_url is by_name is by_number and by_url.client.features.name == "loopback"


def test_a_project_that_installs_polybus_is_unaffected_by_its_pytest_plugin(
    tmp_path: Path,
) -> None:
    """CI=true and no broker: a user's own suite neither loads polybus's plugin nor fails."""
    (tmp_path / "test_mine.py").write_text(
        "import sys\n\n"
        "def test_mine():\n"
        "    assert 'polybus.testing.plugin' not in sys.modules\n"
        "    assert 'polybus.testing.faults' not in sys.modules\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYBUS_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


@pytest.mark.parametrize("name", ["tcp", "redis", "nats", "rabbitmq", "kafka", "mqtt"])
def test_a_transport_package_exports_what_its_type_checking_block_imports(name: str) -> None:
    package = importlib.import_module(f"polybus.transports.{name}")
    for export in package.__all__:
        assert getattr(package, export) is not None, export
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        package.Nope  # noqa: B018
