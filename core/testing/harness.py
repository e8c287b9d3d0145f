"""The conformance harness: servers and clients for one test, on one transport URL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..abc import SupportsCleanup
from ..client import ClientProxy
from ..config import features_of
from ..registry import create_client
from ..server import Microservice
from .app import DEFAULT_PREFIX, Routes, build_app

__all__ = ["Conformance"]

CASE_TIMEOUT = 90.0

NOT_APPLICABLE = "not applicable: "
"""Prefix of every skip that a transport's declared features select (with
POLYBUS_REQUIRE_BROKERS=1, any other skip of a broker test is a failure)."""


class Conformance:
    """One test's view of a transport: fresh routes, servers and clients cleaned up after.

    With ``external=True`` the service is already running elsewhere
    (``polybus run polybus.testing.app:app --url URL``) under the default prefix, and the
    cases that must start or stop servers themselves are skipped.
    """

    def __init__(self, url: str, *, external: bool = False) -> None:
        self.url = url
        self.external = external
        self.features = features_of(url)
        self.token = uuid.uuid4().hex[:12]
        prefix = DEFAULT_PREFIX if external else f"pbc{self.token}"
        self.routes = Routes(prefix, self.features.object_patterns)
        self._client_url = url
        self._servers: list[Microservice] = []
        self._clients: list[ClientProxy] = []
        self._isolation: dict[str, Any] = {}
        if self.features.isolation_option and not external:
            self._isolation[self.features.isolation_option] = f"polybus-conformance-{self.token}"

    # -- building blocks -----------------------------------------------------------------

    async def server(self, instance: str = "a", **options: Any) -> Microservice:
        """Start one more instance of the conformance service."""
        if self.external:
            import pytest

            pytest.skip(f"{NOT_APPLICABLE}needs to start its own server (external server mode)")
        url = self.url
        if urlsplit(url).scheme in ("tcp", "tcps"):
            url = _with_port(url, 0)
        app = build_app(
            url,
            prefix=self.routes.prefix,
            object_patterns=self.features.object_patterns,
            instance=instance,
            **{**self._isolation, **options},
        )
        await app.listen()
        self._servers.append(app)
        port = getattr(app.transport, "port", None)
        if isinstance(port, int) and urlsplit(self.url).scheme in ("tcp", "tcps"):
            self._client_url = _with_port(self.url, port)
        return app

    async def ensure_server(self) -> None:
        """In-process mode: start the service once; external mode: it is already there."""
        if not self.external and not self._servers:
            await self.server()

    def client(self, **options: Any) -> ClientProxy:
        client = create_client(self._client_url, **{**self._isolation, **options})
        self._clients.append(client)
        return client

    async def eventually(
        self,
        probe: Callable[[], Awaitable[Any]],
        check: Callable[[Any], bool],
        timeout: float = 10.0,
    ) -> Any:
        """Poll ``probe`` until ``check`` holds on its result; return the last result."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await probe()
            if check(value) or loop.time() > end:
                return value
            await asyncio.sleep(0.05)

    # -- running -------------------------------------------------------------------------

    def run(self, case: Callable[[Conformance], Awaitable[None]]) -> None:
        """Run one async case in a fresh event loop, then clean up what it created."""

        async def main() -> None:
            try:
                await asyncio.wait_for(case(self), CASE_TIMEOUT)
            finally:
                await self.aclose()

        asyncio.run(main())

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()
        for app in self._servers:
            await app.close(grace=1.0)
        for app in self._servers[:1]:
            transport = app.transport
            if isinstance(transport, SupportsCleanup):
                await transport.delete_resources()
        self._clients.clear()
        self._servers.clear()


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


def external_default() -> bool:
    return os.environ.get("POLYBUS_CONFORMANCE_EXTERNAL", "") in ("1", "true")
