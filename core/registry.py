"""Building clients from configuration, and a registry of named clients.

:func:`create_client` builds one proxy. :class:`ClientRegistry` mirrors NestJS's
``ClientsModule.register`` / ``registerAsync``: named clients from config or from an async
factory, overridable in tests, connected together at startup and closed together at
shutdown. :class:`client_property` is the twin of NestJS's ``@Client()`` property.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, overload

from .abc import ClientTransport
from .client import DEFAULT_TIMEOUT, ClientProxy
from .config import create_client_transport
from .errors import ConfigError
from .middleware import ClientMiddleware
from .packets import MISSING

__all__ = ["ClientRegistry", "client_property", "create_client"]

ClientFactory = Callable[[], Awaitable[ClientProxy]]


def create_client(
    target: Any = None,
    *,
    transport: ClientTransport | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    name: str | None = None,
    middleware: Sequence[ClientMiddleware] = (),
    **options: Any,
) -> ClientProxy:
    """A client for a URL (``"nats://127.0.0.1:4222"``), a NestJS-style dict
    (``{"transport": "TCP", "options": {"host": ..., "port": ...}}``), ``$POLYBUS_URL`` when
    ``target`` is None, or a ready ``transport``. Nothing connects until first use.
    Extra keyword options override the URL's (``serializer="msgpack"``, ``queue=...``).
    """
    if transport is None:
        transport = create_client_transport(target, **options)
    elif target is not None or options:
        raise ConfigError("pass either a target with options or a ready transport, not both")
    return ClientProxy(transport, timeout=timeout, name=name, middleware=middleware)


def _env_name(name: str) -> str:
    return "POLYBUS_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_URL"


class ClientRegistry:
    """Named clients, as ``ClientsModule.register([...])`` declares them.

    ``registry.register("BILLING", "nats://...")`` or with a dict; ``register_async(name,
    factory)`` for a client built by an async factory at :meth:`connect_all`. The
    environment variable ``POLYBUS_<NAME>_URL`` overrides a registered URL, so deployments
    swap transports without code changes. ``override(name, client)`` replaces one in tests.
    """

    def __init__(self) -> None:
        self._configs: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._factories: dict[str, ClientFactory] = {}
        self._clients: dict[str, ClientProxy] = {}

    def register(self, name: str, target: Any = None, **options: Any) -> None:
        if name in self._configs or name in self._factories:
            raise ConfigError(f"client {name!r} is already registered")
        if isinstance(target, Mapping) and "name" in target and target["name"] != name:
            raise ConfigError(f"config names client {target['name']!r}, registered as {name!r}")
        self._configs[name] = (target, options)

    def register_many(self, configs: list[Mapping[str, Any]]) -> None:
        """``ClientsModule.register([{name, transport, options}, ...])``."""
        for config in configs:
            if "name" not in config:
                raise ConfigError("each client config needs a 'name'")
            self.register(str(config["name"]), dict(config))

    def register_async(self, name: str, factory: ClientFactory) -> None:
        if name in self._configs or name in self._factories:
            raise ConfigError(f"client {name!r} is already registered")
        self._factories[name] = factory

    def get(self, name: str) -> ClientProxy:
        """The named client (built on first use from config; async ones after connect_all)."""
        client = self._clients.get(name)
        if client is not None:
            return client
        if name in self._configs:
            target, options = self._configs[name]
            target = os.environ.get(_env_name(name)) or target
            client = self._clients[name] = create_client(target, name=name, **options)
            return client
        if name in self._factories:
            raise ConfigError(
                f"client {name!r} comes from an async factory: await connect_all() first"
            )
        raise ConfigError(
            f"no client named {name!r}; registered: {', '.join(self.names) or 'none'}"
        )

    __getitem__ = get

    @property
    def names(self) -> list[str]:
        return sorted({*self._configs, *self._factories, *self._clients})

    @contextlib.contextmanager
    def override(self, name: str, client: ClientProxy) -> Iterator[ClientProxy]:
        """Use ``client`` for ``name`` inside the block (tests: an in-memory client)."""
        previous = self._clients.get(name)
        self._clients[name] = client
        try:
            yield client
        finally:
            if previous is None:
                self._clients.pop(name, None)
            else:
                self._clients[name] = previous

    async def connect_all(self) -> None:
        """Build async clients and connect every client (NestJS ``onApplicationBootstrap``)."""
        for name, factory in self._factories.items():
            if name not in self._clients:
                self._clients[name] = await factory()
        await asyncio.gather(*(self.get(name).connect() for name in self.names))

    async def close_all(self) -> None:
        """Close every client that was built (NestJS ``onModuleDestroy``)."""
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)

    async def __aenter__(self) -> ClientRegistry:
        await self.connect_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()


class client_property:
    """A class attribute that builds its client from inline options on first use.

    ::

        class Orders:
            billing = client_property("tcp://127.0.0.1:3001")

    The twin of NestJS's ``@Client({...})`` property: one client per instance, created
    lazily, configured like :func:`create_client`.
    """

    def __init__(self, target: Any = None, **options: Any) -> None:
        self._target = target
        self._options = options
        self._attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = f"_polybus_client_{name}"

    @overload
    def __get__(self, instance: None, owner: type) -> client_property: ...

    @overload
    def __get__(self, instance: object, owner: type) -> ClientProxy: ...

    def __get__(self, instance: object | None, owner: type) -> ClientProxy | client_property:
        if instance is None:
            return self
        client = instance.__dict__.get(self._attr, MISSING)
        if client is MISSING:
            client = create_client(self._target, **self._options)
            instance.__dict__[self._attr] = client
        assert isinstance(client, ClientProxy)
        return client
