"""FastAPI integration: the HTTP end of the NestJS tour (``pip install polybus[fastapi]``).

::

    from polybus import ClientProxy, ClientRegistry
    from polybus.fastapi import inject, install_error_handlers, lifespan

    clients = ClientRegistry()
    clients.register("BILLING", "tcp://127.0.0.1:3001")
    app = FastAPI(lifespan=lifespan(clients))
    install_error_handlers(app)

    @app.post("/orders/charge")
    async def charge(order: dict, billing: ClientProxy = inject("BILLING")) -> dict:
        return await billing.send({"cmd": "charge"}, order)

:func:`lifespan` connects the registry at startup and closes it at shutdown (NestJS
``onApplicationBootstrap`` / ``onModuleDestroy``), serves microservices in the same process
(NestJS ``connectMicroservice``) and wraps the application's own lifespan. :func:`inject` is
``@Inject('BILLING')``. :func:`install_error_handlers` turns polybus errors into HTTP
answers; :func:`sse` and :func:`json_lines` return a streamed reply.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .client import ClientProxy
from .errors import ConfigError, ProtocolError, RequestTimeout, RpcError, TransportError
from .registry import ClientRegistry
from .server import Microservice

__all__ = [
    "client_dependency",
    "error_body",
    "error_response",
    "http_status",
    "inject",
    "install_error_handlers",
    "json_lines",
    "lifespan",
    "sse",
]

log = logging.getLogger("polybus.fastapi")

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]]

REGISTRY_STATE = "polybus_clients"
"""The ``app.state`` attribute holding the registry :func:`lifespan` connected."""


def lifespan(
    clients: ClientRegistry | None = None,
    *,
    serve: Iterable[Microservice] = (),
    wraps: Lifespan | None = None,
) -> Lifespan:
    """A FastAPI lifespan: serve ``serve``, connect ``clients``, then run ``wraps``.

    Microservices listen first, so a client of the same process can connect to them; at
    shutdown everything stops in reverse order (the application's lifespan, then the
    clients, then the microservices, which drain their in-flight handlers). Whatever
    ``wraps`` yields is the lifespan state, as if it were the application's lifespan.
    """
    microservices = list(serve)

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            for microservice in microservices:
                stack.push_async_callback(microservice.close)
                await microservice.listen()
            if clients is not None:
                setattr(app.state, REGISTRY_STATE, clients)
                stack.push_async_callback(clients.close_all)
                await clients.connect_all()
            state = None
            if wraps is not None:
                state = await stack.enter_async_context(wraps(app))
            yield state

    return run


def _registry_of(request: Request) -> ClientRegistry:
    registry = getattr(request.app.state, REGISTRY_STATE, None)
    if not isinstance(registry, ClientRegistry):
        raise ConfigError(
            "no ClientRegistry on this app: create it with FastAPI(lifespan=lifespan(clients))"
        )
    return registry


@functools.cache
def client_dependency(name: str) -> Callable[[Request], ClientProxy]:
    """The dependency giving the client ``name``: one function per name, so it is also the
    key of ``app.dependency_overrides[client_dependency("BILLING")]``."""

    def dependency(request: Request) -> ClientProxy:
        return _registry_of(request).get(name)

    dependency.__name__ = dependency.__qualname__ = f"polybus_client_{name}"
    return dependency


def inject(name: str) -> Any:
    """``Depends`` on the client ``name`` of the lifespan's registry (NestJS ``@Inject``).

    ``billing: ClientProxy = inject("BILLING")`` or
    ``Annotated[ClientProxy, inject("BILLING")]``. ``registry.override(name, client)`` and
    ``app.dependency_overrides[client_dependency(name)]`` both replace it in tests.
    """
    return Depends(client_dependency(name))


# -- errors ------------------------------------------------------------------------------

BAD_GATEWAY = 502


def _status_in(error: Any) -> int | None:
    """The HTTP status a NestJS ``RpcException`` payload asks for, if any."""
    if not isinstance(error, Mapping):
        return None
    for key in ("status", "statusCode"):
        status = error.get(key)
        if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
            return status
    return None


def http_status(exc: Exception) -> int:
    """The HTTP status for a polybus error: the one an ``RpcError`` payload asks for
    (``{"status": 404}`` / ``{"statusCode": 404}``), else 502; 504 for a timeout; 503 when
    the transport could not carry the call; 502 for a reply that breaks the protocol."""
    if isinstance(exc, RpcError):
        return _status_in(exc.error) or BAD_GATEWAY
    if isinstance(exc, RequestTimeout):
        return 504
    if isinstance(exc, TransportError):
        return 503
    return BAD_GATEWAY


_MESSAGES = {
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_body(exc: Exception) -> dict[str, Any]:
    """The JSON body answering ``exc``, shaped like NestJS's HTTP errors.

    An ``RpcError`` carries the remote payload (the handler chose to send it); transport
    and timeout errors say only their type, never addresses or broker messages.
    """
    status = http_status(exc)
    if isinstance(exc, RpcError):
        return {"statusCode": status, "message": str(exc), "error": exc.error}
    return {"statusCode": status, "message": _MESSAGES[status], "error": type(exc).__name__}


def error_response(exc: Exception) -> JSONResponse:
    """The HTTP answer to a polybus error raised by ``send()`` in an endpoint."""
    return JSONResponse(error_body(exc), status_code=http_status(exc))


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return error_response(exc)


_HANDLED = (RpcError, RequestTimeout, TransportError, ProtocolError)


def install_error_handlers(app: FastAPI) -> None:
    """Answer ``RpcError``, ``RequestTimeout``, ``TransportError`` (``NoRespondersError``...)
    and ``ProtocolError`` escaping an endpoint with :func:`error_response`."""
    for error in _HANDLED:
        app.add_exception_handler(error, _handle)


# -- streamed replies --------------------------------------------------------------------

Frame = Callable[[str, Any], bytes]
"""Encodes one frame of a streamed reply: kind ``"value"``, ``"error"`` or ``"end"``."""


def _sse_frame(kind: str, data: Any) -> bytes:
    head = b"" if kind == "value" else f"event: {kind}\n".encode()
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _ndjson_frame(kind: str, data: Any) -> bytes:
    if kind == "end":
        return b""
    return orjson.dumps({"error": data} if kind == "error" else data) + b"\n"


_EMPTY = object()


async def _stream(values: AsyncIterable[Any], media_type: str, frame: Frame) -> StreamingResponse:
    """Wait for the first value, so a call failing at once gets its HTTP status from the
    error handlers; a failure after that can only be the stream's last frame."""
    iterator = aiter(values)
    try:
        first = await anext(iterator, _EMPTY)
    except BaseException:
        await _close(iterator)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not _EMPTY:
                yield frame("value", first)
                async for value in iterator:
                    yield frame("value", value)
        except _HANDLED as exc:
            log.warning("stream ended by %s: %s", type(exc).__name__, exc)
            yield frame("error", error_body(exc))
            return
        finally:
            await _close(iterator)
        yield frame("end", None)

    return StreamingResponse(body(), media_type=media_type)


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def sse(values: AsyncIterable[Any]) -> StreamingResponse:
    """A streamed reply (``client.send(...)`` iterated) as Server-Sent Events.

    ``return await sse(billing.send("ticks", 5))``: one ``data:`` frame (JSON) per value, in
    order, then ``event: end`` so an ``EventSource`` knows not to reconnect; an error after
    the first value becomes a last ``event: error`` frame with the error body.
    """
    return await _stream(values, "text/event-stream", _sse_frame)


async def json_lines(values: AsyncIterable[Any]) -> StreamingResponse:
    """A streamed reply as newline-delimited JSON: one line per value; an error after the
    first value becomes a last line ``{"error": <error body>}``."""
    return await _stream(values, "application/x-ndjson", _ndjson_frame)
