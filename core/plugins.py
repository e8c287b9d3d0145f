"""Transports are plugins: each one declares itself, core keeps no list of them.

A transport package exposes a :class:`TransportSpec` — its schemes, its NestJS
``Transport`` name and number, the extra that installs its client library, and where its
implementation is — and registers it in the ``polybus.transports`` entry-point group of
its distribution::

    [project.entry-points."polybus.transports"]
    mqtt = "polybus_mqtt:SPEC"

The built-in transports register the same way (polybus's own ``pyproject.toml``). The
declaration must import no broker library: it is read to find a scheme, and the
implementation (a :class:`TransportPlugin`: options type, ``Features``, client and server
factories) is imported only when a URL or NestJS dict selects it.
:func:`register_transport` adds a declaration at run time (tests, applications).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError

if TYPE_CHECKING:
    from .abc import ClientTransport, Features, ServerTransport
    from .config import TransportOptions
    from .serializers import Serializer
    from .testing.injection import FaultInjection

__all__ = [
    "ENTRY_POINT_GROUP",
    "ClientFactory",
    "LocalBroker",
    "ServerFactory",
    "TransportPlugin",
    "TransportSpec",
    "find_by_nest_name",
    "find_by_scheme",
    "lazy_attributes",
    "register_transport",
    "transport_specs",
]

log = logging.getLogger("polybus.plugins")

ENTRY_POINT_GROUP = "polybus.transports"


class ClientFactory(Protocol):
    """Builds the client half from parsed options (the client transport class itself)."""

    features: Features

    def __call__(self, options: Any, serializer: Serializer, /) -> ClientTransport: ...


class ServerFactory(Protocol):
    """Builds the server half from parsed options (the server transport class itself)."""

    features: Features

    def __call__(self, options: Any, serializer: Serializer, /) -> ServerTransport: ...


@dataclass(frozen=True)
class TransportPlugin:
    """A transport's implementation: its options type, the factories of its two halves and,
    optionally, what it offers the fault suite (:mod:`polybus.testing.injection`)."""

    options: type[TransportOptions]
    client: ClientFactory
    server: ServerFactory
    faults: FaultInjection | None = None
    options_features: Callable[[Any], Features] | None = None
    """The features for given options, where options change them (NATS JetStream); else
    the client factory's ``features``."""

    def features(self, options: Any) -> Features:
        if self.options_features is not None:
            return self.options_features(options)
        return self.client.features


@dataclass(frozen=True)
class LocalBroker:
    """Where the test suites (:mod:`polybus.testing.brokers`) find a broker of a transport:
    the URL in environment variable ``env`` (``POLYBUS_<NAME>_URL``), else ``url``; if
    nothing answers there, a container of ``image`` (run with ``command``, listening on
    ``container_port``, else on ``url``'s port) where Docker is available; its URL is then
    ``url`` with the container's host and port."""

    env: str
    url: str
    image: str | None = None
    command: tuple[str, ...] = ()
    container_port: int | None = None


@dataclass(frozen=True)
class TransportSpec:
    """A transport's declaration, readable without importing its client library.

    ``implementation`` is ``"module:attribute"`` of its :class:`TransportPlugin`;
    ``nest_names`` the NestJS ``Transport`` names that select it in a dict config (the
    first is NestJS's own), ``nest_number`` the ``Transport`` enum value; ``extra`` the
    ``pip install polybus[extra]`` that brings its client library; ``test_broker`` where
    the test suites find a broker of it (``None``: it needs none, or none is declared).
    """

    name: str
    schemes: tuple[str, ...]
    implementation: str
    nest_names: tuple[str, ...] = ()
    nest_number: int | None = None
    extra: str | None = None
    test_broker: LocalBroker | None = None

    def load(self) -> TransportPlugin:
        module_name, _, attribute = self.implementation.partition(":")
        try:
            module = importlib.import_module(module_name)
            plugin = getattr(module, attribute or "PLUGIN")
        except ImportError as exc:
            hint = f": pip install polybus[{self.extra}]" if self.extra else ""
            raise ConfigError(
                f"the {self.name} transport needs its client library{hint} ({exc})"
            ) from exc
        if not isinstance(plugin, TransportPlugin):
            raise ConfigError(f"{self.implementation} is not a TransportPlugin")
        return plugin


_registered: list[TransportSpec] = []


def register_transport(spec: TransportSpec) -> None:
    """Add a transport at run time; it wins over an installed one of the same scheme."""
    _registered.append(spec)
    _installed_index.cache_clear()


def transport_specs() -> list[TransportSpec]:
    """Every transport known: installed through the entry-point group, then registered."""
    return [*_installed(), *_registered]


@functools.cache
def _installed() -> tuple[TransportSpec, ...]:
    specs = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = entry_point.load()
        except Exception as exc:  # a broken third-party package must not break the others
            log.warning("cannot load transport %r (%s): %s", entry_point.name, entry_point, exc)
            continue
        if isinstance(spec, TransportSpec):
            specs.append(spec)
        else:
            log.warning("transport entry point %s is not a TransportSpec", entry_point)
    return tuple(specs)


@functools.cache
def _installed_index() -> tuple[dict[str, TransportSpec], dict[str, TransportSpec]]:
    by_scheme: dict[str, TransportSpec] = {}
    by_nest: dict[str, TransportSpec] = {}
    for spec in transport_specs():  # later ones (registered at run time) win
        by_scheme.update(dict.fromkeys(spec.schemes, spec))
        names: Iterable[str] = spec.nest_names
        if spec.nest_number is not None:
            names = [*names, str(spec.nest_number)]
        by_nest.update({name.upper(): spec for name in names})
    return by_scheme, by_nest


def find_by_scheme(scheme: str) -> TransportSpec:
    by_scheme, _ = _installed_index()
    spec = by_scheme.get(scheme)
    if spec is None:
        known = ", ".join(sorted(by_scheme))
        raise ConfigError(f"unknown transport scheme {scheme!r}; known schemes: {known}")
    return spec


def find_by_nest_name(transport: Any) -> TransportSpec:
    """The transport a NestJS dict's ``transport`` selects: a name (NestJS's ``RMQ``), an
    enum member (``Transport.RMQ``) or its number (``5``)."""
    name = getattr(transport, "name", transport)
    _, by_nest = _installed_index()
    spec = by_nest.get(str(name).upper())
    if spec is None:
        known = ", ".join(sorted(n for n in by_nest if not n.isdigit()))
        raise ConfigError(f"unknown transport {transport!r}; known: {known}")
    return spec


def lazy_attributes(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a transport package's ``__init__``, which holds the
    declaration and so must stay free of its client library: ``name`` is imported on first
    use from the module that the package's ``if TYPE_CHECKING:`` block imports it from
    (one list, read by the type checker and by this), so that
    ``from polybus.transports.x import XClientTransport`` works."""

    def __getattr__(name: str) -> Any:
        module = _typing_imports(package).get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    return __getattr__


@functools.cache
def _typing_imports(package: str) -> dict[str, str]:
    """Name → relative module of every ``from .module import name`` in the top-level
    ``if TYPE_CHECKING:`` blocks of ``package``'s ``__init__``."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return {}
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    where: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in _TYPE_CHECKING:
            for item in node.body:
                if isinstance(item, ast.ImportFrom) and item.level:
                    module = "." * item.level + (item.module or "")
                    where.update((alias.asname or alias.name, module) for alias in item.names)
    return where


_TYPE_CHECKING = frozenset(("TYPE_CHECKING", "typing.TYPE_CHECKING"))
