"""An AsyncAPI 3.0 description of a ``Microservice``: ``polybus asyncapi module:app``.

Each route is a channel (its address is the route, as the broker sees it; ``null`` when the
route is a JSON object pattern, whose braces AsyncAPI would read as address parameters).
Each message pattern is a ``receive`` operation with a reply (on a channel of its own,
address ``null``: the caller chooses where replies go); each event pattern a ``receive``
operation without one. Payload schemas come from the handlers' annotations through
pydantic (``TypeAdapter`` JSON schemas; named models land in ``components/schemas``). The
server comes from the transport URL, without credentials or query.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import typing
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError
from pydantic.json_schema import JsonSchemaMode, JsonSchemaValue

from .handlers import Handler
from .server import Microservice

__all__ = ["ASYNCAPI_VERSION", "build_document"]

ASYNCAPI_VERSION = "3.0.0"

REF_TEMPLATE = "#/components/schemas/{model}"

_STREAMS = {
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
}
_MESSAGE_NAMES = {"message": "request", "event": "event"}
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def build_document(
    app: Microservice,
    *,
    url: str | None = None,
    title: str | None = None,
    version: str = "1.0.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app``; ``url`` (its transport URL) gives the server."""
    schemas = _Schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    ids: set[str] = set()
    for route, kinds in _routes(app.handlers).items():
        channel_id = _unique(_UNSAFE_ID.sub("_", route).strip("_") or "route", ids)
        channel: dict[str, Any] = {
            "address": None if "{" in route else route,
            "title": route,
            "messages": {},
            "x-polybus-pattern": next(iter(kinds.values()))[0].pattern,
        }
        channels[channel_id] = channel
        for kind, handlers in kinds.items():
            message = _MESSAGE_NAMES[kind]
            payload = next((h.payload_type for h in handlers if h.payload_type is not None), None)
            channel["messages"][message] = {"payload": schemas.add(payload, "validation")}
            operation: dict[str, Any] = {
                "action": "receive",
                "channel": _ref("channels", channel_id),
                "messages": [_ref("channels", channel_id, "messages", message)],
            }
            summary = _summary(handlers)
            if summary:
                operation["summary"] = summary
            if kind == "message":
                reply_id = _unique(f"{channel_id}.reply", ids)
                reply = schemas.add(_reply_type(handlers[0]), "serialization")
                channels[reply_id] = {"address": None, "messages": {"reply": {"payload": reply}}}
                operation["reply"] = {
                    "channel": _ref("channels", reply_id),
                    "messages": [_ref("channels", reply_id, "messages", "reply")],
                }
            operations[f"{kind}_{channel_id}"] = operation
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title or app.name or "polybus service", "version": version},
        "defaultContentType": "application/json",
    }
    if url:
        document["servers"] = {"default": server_of(url)}
    document["channels"] = channels
    document["operations"] = operations
    components = schemas.resolve()
    if components:
        document["components"] = {"schemas": components}
    return document


def server_of(url: str) -> dict[str, Any]:
    """The AsyncAPI server of a transport URL: scheme and hosts, never user or password."""
    parts = urlsplit(url)
    server: dict[str, Any] = {
        "host": parts.netloc.rsplit("@", 1)[-1] or "localhost",
        "protocol": parts.scheme,
    }
    if parts.path not in ("", "/"):
        server["pathname"] = parts.path
    return server


def _routes(handlers: Iterable[Handler]) -> dict[str, dict[str, list[Handler]]]:
    """Handlers by route, then by kind (``"message"``: the one handler; ``"event"``: all)."""
    by_route: dict[str, dict[str, list[Handler]]] = {}
    for handler in handlers:
        by_route.setdefault(handler.route, {}).setdefault(handler.kind, []).append(handler)
    return by_route


def _unique(candidate: str, taken: set[str]) -> str:
    name, n = candidate, 1
    while name in taken:
        n += 1
        name = f"{candidate}_{n}"
    taken.add(name)
    return name


def _ref(*path: str) -> dict[str, str]:
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in path)
    return {"$ref": "#/" + "/".join(escaped)}


def _summary(handlers: list[Handler]) -> str:
    docs = (inspect.getdoc(h.fn) for h in handlers)
    return " ".join(doc.strip().splitlines()[0] for doc in docs if doc and doc.strip())


def _reply_type(handler: Handler) -> Any:
    """What the handler answers with: its return annotation, the item type of a stream."""
    try:
        annotation = typing.get_type_hints(handler.fn).get("return")
    except (NameError, TypeError):
        return None
    if annotation is None:
        return None
    if annotation is type(None):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in _STREAMS:
        args = typing.get_args(annotation)
        return args[0] if args else None
    return annotation


class _Schemas:
    """Collects the payload types, then makes their JSON schemas in one pass, so models
    used in several places are one entry of ``components/schemas``."""

    def __init__(self) -> None:
        self._pending: list[tuple[dict[str, Any], Any, JsonSchemaMode]] = []

    def add(self, annotation: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        """A placeholder schema, filled in by :meth:`resolve` (``{}``: anything)."""
        placeholder: dict[str, Any] = {}
        if annotation is not None:
            self._pending.append((placeholder, annotation, mode))
        return placeholder

    def resolve(self) -> dict[str, JsonSchemaValue]:
        inputs = []
        for index, (placeholder, annotation, mode) in enumerate(self._pending):
            try:
                adapter: TypeAdapter[Any] = TypeAdapter(annotation)
                adapter.json_schema(mode=mode)  # one type without a schema must not sink all
            except (PydanticSchemaGenerationError, PydanticUserError):
                placeholder["description"] = f"no JSON schema for {annotation!r}"
                continue
            inputs.append((index, mode, adapter))
        if not inputs:
            return {}
        generated, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
        for index, mode, _ in inputs:
            self._pending[index][0].update(generated[(index, mode)])
        components: dict[str, JsonSchemaValue] = definitions.get("$defs", {})
        return components
