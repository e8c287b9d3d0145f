"""Handler registration: ``@message_pattern`` / ``@event_pattern`` and how handlers are called.

A handler may be a function or a method, sync or async, or an (async) generator that
streams its reply. Its first parameter that is not the context receives the payload; if
that parameter is annotated (a pydantic model or any type pydantic understands) the
payload is validated, and a validation failure becomes an error reply. A parameter
annotated with :class:`polybus.Context` (or a transport's subclass) receives the context.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .abc import Context
from .errors import ConfigError
from .middleware import HandleNext, ServerMiddleware, check_middleware
from .patterns import to_route
from .policy import FailurePolicy

__all__ = ["Handler", "event_pattern", "message_pattern"]

F = TypeVar("F", bound=Callable[..., Any])

HANDLERS_ATTR = "__polybus_handlers__"

_NO_VALIDATION = (Any, object, inspect.Parameter.empty)


@dataclass(frozen=True)
class HandlerMark:
    """What a decorator records on a function until a ``Microservice`` collects it."""

    pattern: Any
    kind: Literal["message", "event"]
    options: dict[str, Any] = field(default_factory=dict)


def _mark(
    pattern: Any, kind: Literal["message", "event"], options: dict[str, Any]
) -> Callable[[F], F]:
    if pattern is None:
        raise ConfigError("a handler pattern must not be None")
    to_route(pattern)  # fail at decoration time on an unusable pattern

    def decorate(fn: F) -> F:
        marks = list(getattr(fn, HANDLERS_ATTR, ()))
        marks.append(HandlerMark(pattern, kind, options))
        setattr(fn, HANDLERS_ATTR, marks)
        return fn

    return decorate


def message_pattern(pattern: Any, **options: Any) -> Callable[[F], F]:
    """Mark a function or method as the request handler of ``pattern``.

    Options are transport-specific (e.g. ``queue=`` on NATS), but for ``on_failure`` (a
    :class:`~polybus.policy.FailurePolicy`, for events). Collect marked methods with
    ``Microservice.include(obj)``.
    """
    return _mark(pattern, "message", options)


def event_pattern(pattern: Any, **options: Any) -> Callable[[F], F]:
    """Mark a function or method as an event handler of ``pattern`` (several may share one)."""
    return _mark(pattern, "event", options)


class Handler:
    """A registered handler with its call shape worked out once, at registration."""

    __slots__ = (
        "chain",
        "fn",
        "is_asyncgen",
        "is_coroutine",
        "is_generator",
        "kind",
        "middleware",
        "name",
        "options",
        "pass_context",
        "pass_data",
        "pattern",
        "payload_type",
        "policy",
        "route",
        "validate",
    )

    def __init__(self, fn: Callable[..., Any], mark: HandlerMark) -> None:
        self.fn = fn
        self.kind = mark.kind
        self.pattern = mark.pattern
        options = dict(mark.options)
        policy = options.pop("on_failure", None)
        if policy is not None and not isinstance(policy, FailurePolicy):
            raise ConfigError(f"on_failure must be a FailurePolicy, got {policy!r}")
        self.policy: FailurePolicy | None = policy
        """The handler's own failure policy (events); ``None``: the service's."""
        self.middleware: list[ServerMiddleware] = check_middleware(
            options.pop("middleware", []), ServerMiddleware
        )
        """The route's own middleware (inside the service's)."""
        self.chain: HandleNext | None = None
        """The service's and the route's middleware around the handler, composed when the
        service starts listening; ``None`` when there is none (the plain path runs)."""
        self.options = options
        """Transport options of the route (``on_failure`` and ``middleware`` are core's and
        are left out)."""
        self.route = to_route(mark.pattern)
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.is_coroutine = inspect.iscoroutinefunction(fn)
        self.is_asyncgen = inspect.isasyncgenfunction(fn)
        self.is_generator = inspect.isgeneratorfunction(fn)
        self.pass_data, self.pass_context, self.payload_type = _call_shape(fn)
        """``payload_type``: the data parameter's annotation, None when it takes anything."""
        self.validate = None if self.payload_type is None else _validator(self.payload_type)

    def call(self, data: Any, context: Context) -> Any:
        """Call the handler; returns its raw result (value, coroutine or generator)."""
        if self.validate is not None:
            data = self.validate(data)
        if self.pass_context is None:
            return self.fn(data) if self.pass_data else self.fn()
        if self.pass_data:
            return (
                self.fn(data, context)
                if self.pass_context == ""
                else self.fn(data, **{self.pass_context: context})
            )
        return (
            self.fn(context) if self.pass_context == "" else self.fn(**{self.pass_context: context})
        )

    def __repr__(self) -> str:
        return f"<Handler {self.kind} {self.route!r} -> {self.name}>"


def _call_shape(fn: Callable[..., Any]) -> tuple[bool, str | None, Any]:
    """(takes data?, how to pass the context: None / "" positional / keyword name,
    the data annotation to validate against or None)."""
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigError(f"cannot inspect handler {fn!r}: {exc}") from exc
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    data_param: inspect.Parameter | None = None
    context: str | None = None
    for position, param in enumerate(params):
        annotation = hints.get(param.name, inspect.Parameter.empty)
        is_context = (isinstance(annotation, type) and issubclass(annotation, Context)) or (
            annotation is inspect.Parameter.empty and param.name in ("ctx", "context")
        )
        if is_context:
            positional = param.kind != param.KEYWORD_ONLY and position == (1 if data_param else 0)
            context = "" if positional else param.name
        elif data_param is None and param.kind != param.KEYWORD_ONLY:
            data_param = param
        elif param.default is inspect.Parameter.empty:
            raise ConfigError(f"handler {fn!r}: parameter {param.name!r} cannot be filled")
    payload_type = None
    if data_param is not None:
        annotation = hints.get(data_param.name, inspect.Parameter.empty)
        if annotation not in _NO_VALIDATION:
            payload_type = annotation
    return data_param is not None, context, payload_type


def _validator(annotation: Any) -> Callable[[Any], Any]:
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    validate = adapter.validate_python
    if isinstance(annotation, type) and annotation.__module__ == "builtins":
        plain = annotation

        def check(data: Any) -> Any:
            # Fast path: a value of the exact builtin type needs no validation.
            return data if type(data) is plain else validate(data)

        return check
    return validate
