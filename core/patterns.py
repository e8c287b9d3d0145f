"""Pattern → route strings, exactly as NestJS makes them.

NestJS keeps handlers in a map keyed by a *route string* made from the pattern by
``transformPatternToRoute`` (``@nestjs/microservices`` 12.1.1,
``utils/transform-pattern.utils.js``); channel, subject and topic names are the same
string. Two sides agree on a pattern only if they make the same string, byte for byte.

The rules (:func:`to_route`):

1. A string is used as is; a number becomes its JavaScript ``String(n)``
   (:func:`js_number`: ``1.0`` → ``"1"``, ``1e21`` → ``"1e+21"``, ``1e-7`` → ``"1e-7"``).
2. An object (a ``dict``; a ``list``/``tuple`` is an object with keys ``"0"``, ``"1"``, ...)
   becomes ``{"<key>":<value>,...}``: keys sorted by JavaScript ``localeCompare`` (ICU
   collation, root/en-US, tertiary strength), no whitespace, keys and string values
   quoted with only ``\\`` and ``"`` escaped (a newline stays a raw newline); numbers
   per rule 1, ``True``/``False``/``None`` as ``true``/``false``/``null``, objects
   recursively.
3. An object nested deeper than :data:`MAX_DEPTH` levels becomes the bare text
   ``[MAX_DEPTH_REACHED]``; an object with more than :data:`MAX_KEYS` keys becomes
   ``[TOO_MANY_KEYS]`` (the depth check comes first). Both are written unquoted where the
   object would have been, and what is inside them is not looked at.

Key order needs locale collation, not code-point order (``a < A < b < B``, punctuation
before digits before letters, ``"10" < "9"``, ``é`` next to ``e``). Keys made only of
``[a-z0-9]`` sort the same either way (each such character is one collation element
whose primary weight rises with its code point, and root has no contractions among
them), so those take plain ``list.sort``; any other key goes through the Unicode
Collation Algorithm (``pyuca``, loaded on first need). ``pyuca``'s DUCET 10.0.0 table
matches ICU's CLDR root order on every key of the NestJS test vectors and on random keys
of ASCII, Latin, Greek, Cyrillic, kana, CJK and punctuation; it can differ from ICU for
characters added to Unicode after 10.0 (e.g. newer emoji) and for a dozen exotic
characters that CLDR tailors. Keys that collate equal (``"é"`` vs ``"e\\u0301"``, or
keys differing only by ignorable control characters) keep JavaScript's ``Object.keys``
order: canonical array-index keys first in numeric order, then insertion order.

:func:`route_from_wire` is the server-side rule for a pattern string read off the wire:
``JSON.parse`` it and normalize the result, or normalize the string itself if it is not
JSON. So ``'{"role":"x","cmd":"y"}'`` reaches the handler of ``{"cmd": "y", "role": "x"}``,
``'1e3'`` becomes ``"1000"``, and ``'"x"'`` becomes ``"x"``. JSON ``true``, ``false`` and
``null`` are not routes in NestJS (the map lookup with a non-string key misses), so they
become :data:`NO_ROUTE`, a string that no handler should be registered under.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from .errors import short_repr

__all__ = [
    "MAX_DEPTH",
    "MAX_KEYS",
    "NO_ROUTE",
    "WildcardRoutes",
    "js_number",
    "route_from_wire",
    "to_route",
]

MAX_DEPTH: Final = 5
"""Objects nested deeper than this (the pattern is depth 0) become ``[MAX_DEPTH_REACHED]``."""
MAX_KEYS: Final = 20
"""Objects with more keys than this become ``[TOO_MANY_KEYS]``."""
NO_ROUTE: Final = "\x00polybus:no-route\x00"
"""What :func:`route_from_wire` returns for JSON ``true``/``false``/``null``: never a route."""

_MAX_DEPTH_REACHED: Final = "[MAX_DEPTH_REACHED]"
_TOO_MANY_KEYS: Final = "[TOO_MANY_KEYS]"
_MAX_SAFE_INT: Final = 2**53  # every int up to here prints the same in JS and Python

# Keys whose code-point order equals ICU order (see module docstring); checked on all the
# keys of an object joined into one string.
_simple_keys: Final = re.compile(r"[a-z0-9]*").fullmatch
# A canonical array index: Object.keys() lists these first, in numeric order.
_array_index: Final = re.compile(r"0|[1-9][0-9]{0,9}").fullmatch
_MAX_ARRAY_INDEX: Final = 2**32 - 2


# --------------------------------------------------------------------------- numbers


def js_number(n: int | float) -> str:
    """Return JavaScript's ``String(n)`` for a number.

    Integers print as JavaScript prints the double they become (beyond 2**53 they are
    rounded, and from 1e21 on they use exponent form). ``-0.0`` gives ``"0"``, NaN and
    infinities give ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
    """
    if type(n) is int:
        return str(n) if -_MAX_SAFE_INT <= n <= _MAX_SAFE_INT else _js_big_int(n)
    if type(n) is float:
        return _js_float(n)
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"js_number() takes an int or a float, not {type(n).__name__}")
    return js_number(int(n)) if isinstance(n, int) else _js_float(float(n))


def _js_big_int(n: int) -> str:
    try:
        return _js_float(float(n))
    except OverflowError:  # beyond the largest double: JS reads such a literal as Infinity
        return "Infinity" if n > 0 else "-Infinity"


def _js_float(x: float) -> str:
    """ECMAScript Number::toString(x) (radix 10)."""
    if x.is_integer() and -_MAX_SAFE_INT <= x <= _MAX_SAFE_INT:
        return str(int(x))  # also turns -0.0 into "0"
    if not math.isfinite(x):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    # repr() gives the shortest round-tripping digits, as JS does; only the layout differs.
    r = repr(x)
    sign = ""
    if r[0] == "-":
        sign, r = "-", r[1:]
    mantissa, _, exp = r.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    point = len(int_part) + (int(exp) if exp else 0)  # decimal point after `point` digits
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    e = point - 1
    return (
        sign
        + digits[0]
        + ("." + digits[1:] if k > 1 else "")
        + ("e+" if e >= 0 else "e-")
        + str(abs(e))
    )


# --------------------------------------------------------------------------- collation

_sort_key_fn: Callable[[str], tuple[int, ...]] | None = None
_SORT_KEYS: dict[str, tuple[int, ...]] = {}
_SORT_KEYS_MAX: Final = 4096


def _collation_key(key: str) -> tuple[int, ...]:
    """UCA (DUCET 10.0.0, non-ignorable, tertiary) sort key of `key`, memoized."""
    sk = _SORT_KEYS.get(key)
    if sk is None:
        global _sort_key_fn
        fn = _sort_key_fn
        if fn is None:
            from pyuca.collator import Collator_10_0_0  # type: ignore[import-untyped]

            fn = _sort_key_fn = Collator_10_0_0().sort_key
        sk = fn(key)
        if len(_SORT_KEYS) >= _SORT_KEYS_MAX:
            _SORT_KEYS.clear()
        _SORT_KEYS[key] = sk
    return sk


def _collate(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Sort (key, anything) pairs as ``Object.keys(o).sort((a, b) => a.localeCompare(b))``."""
    # Start from Object.keys() order (it decides between keys that collate equal).
    index_pairs = [
        p for p in pairs if _array_index(p[0]) is not None and int(p[0]) <= _MAX_ARRAY_INDEX
    ]
    if index_pairs and len(index_pairs) < len(pairs):
        index_pairs.sort(key=lambda p: int(p[0]))
        seen = {p[0] for p in index_pairs}
        pairs = index_pairs + [p for p in pairs if p[0] not in seen]
    elif index_pairs:
        pairs.sort(key=lambda p: int(p[0]))
    pairs.sort(key=lambda p: _collation_key(p[0]))
    return pairs


# --------------------------------------------------------------------------- routes


def to_route(pattern: object) -> str:
    """Return the route string for a pattern given by a caller or a handler registration.

    ``str`` is returned unchanged, ``int``/``float`` as :func:`js_number`, and ``dict``,
    ``list`` and ``tuple`` (nested values may also be ``bool`` and ``None``) normalized
    as NestJS does. Dict keys must be strings.

    Raises:
        TypeError: the pattern, a key or a nested value has another type (a top-level
            ``bool`` or ``None`` included: NestJS has no route for those).
    """
    tp = type(pattern)
    if tp is str:
        return pattern  # type: ignore[return-value]
    if tp is dict or tp is list or tp is tuple:
        return _object(pattern, 0)
    if tp is int or tp is float:
        return js_number(pattern)  # type: ignore[arg-type]
    if isinstance(pattern, str):
        return str.__str__(pattern)
    if isinstance(pattern, (bool, type(None))):
        raise TypeError(
            f"a message pattern cannot be {short_repr(pattern)}: use a str, number or dict"
        )
    if isinstance(pattern, (int, float)):
        return js_number(pattern)
    if isinstance(pattern, (Mapping, list, tuple)):
        return _object(pattern, 0)
    raise TypeError(
        f"unsupported message pattern type {type(pattern).__name__}: "
        "use a str, int, float, dict, list or tuple"
    )


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


# How to write an object with given keys: (key to look the value up by, '"<key>":')
# pairs in route order. Plans for dicts are memoized by the dict's key tuple.
_Plan = tuple[tuple[object, str], ...]
_PLANS: dict[tuple[object, ...], _Plan] = {}
_PLANS_MAX: Final = 1024
_PLAN_MAX_KEY_CHARS: Final = 1024  # don't memoize plans for huge keys
_LIST_PLANS: Final[tuple[_Plan, ...]] = tuple(
    tuple((i, f'"{i}":') for i in sorted(range(n), key=str)) for n in range(MAX_KEYS + 1)
)


def _object(obj: object, depth: int) -> str:
    if depth > MAX_DEPTH:
        return _MAX_DEPTH_REACHED
    plan: _Plan | None
    if type(obj) is dict or isinstance(obj, dict):
        if len(obj) > MAX_KEYS:
            return _TOO_MANY_KEYS
        keys = tuple(obj)
        plan = _PLANS.get(keys)
        if plan is None:
            plan = _make_plan(keys)
    elif isinstance(obj, (list, tuple)):
        if len(obj) > MAX_KEYS:
            return _TOO_MANY_KEYS
        plan = _LIST_PLANS[len(obj)]
    else:  # another Mapping
        assert isinstance(obj, Mapping)
        return _object(dict(obj), depth)
    src: Any = obj
    depth += 1
    parts = []
    for key, prefix in plan:
        value = src[key]
        vt = type(value)
        if vt is str:
            if '"' in value or "\\" in value:
                value = _escape(value)
            parts.append(f'{prefix}"{value}"')
        elif vt is int:
            parts.append(
                prefix + str(value)
                if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
                else prefix + _js_big_int(value)
            )
        elif vt is dict or vt is list or vt is tuple:
            parts.append(prefix + _object(value, depth))
        elif value is True:
            parts.append(prefix + "true")
        elif value is False:
            parts.append(prefix + "false")
        elif value is None:
            parts.append(prefix + "null")
        elif vt is float:
            parts.append(prefix + _js_float(value))
        else:
            parts.append(prefix + _other_value(value, depth))
    return "{" + ",".join(parts) + "}"


def _make_plan(keys: tuple[object, ...]) -> _Plan:
    try:
        joined = "".join(keys)  # type: ignore[arg-type]
    except TypeError:  # a key that is not a str: _key_str raises the error
        joined = "".join(map(_key_str, keys))
    plan: _Plan
    if _simple_keys(joined) is not None:
        # Only [a-z0-9]: code-point order is collation order and nothing needs escaping.
        plan = tuple((k, '"' + k + '":') for k in sorted(keys))  # type: ignore[operator, type-var]
    else:
        texts = [(_key_str(k), k) for k in keys]
        plan = tuple((k, '"' + _escape(text) + '":') for text, k in _collate(texts))
    if len(joined) <= _PLAN_MAX_KEY_CHARS:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[keys] = plan
    return plan


def _key_str(key: object) -> str:
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str.__str__(key)
    raise TypeError(f"message pattern keys must be str, not {type(key).__name__} ({key!r})")


def _other_value(value: object, depth: int) -> str:
    """A nested value of a less common type (subclasses of the usual ones, Mappings)."""
    if isinstance(value, str):
        return '"' + _escape(str.__str__(value)) + '"'
    if isinstance(value, (int, float)):  # bool itself never gets here
        return js_number(value)
    if isinstance(value, (Mapping, list, tuple)):
        return _object(value, depth)
    raise TypeError(
        f"unsupported value of type {type(value).__name__} in a message pattern: "
        "use str, int, float, bool, None, dict, list or tuple"
    )


# --------------------------------------------------------------------------- wire


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # JSON.parse rejects NaN and Infinity


def _parse_int(s: str) -> int | float:
    # JS reads every number as a double; very long digit strings would also trip
    # Python's int() digit limit.
    return int(s) if len(s) <= 18 else float(s)


_decode: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int).decode

# First characters of a string that JSON.parse could accept.
_JSON_START: Final = frozenset('{["-0123456789tfn \t\n\r')
_WIRE_MEMO: dict[str, str] = {}
_WIRE_MEMO_MAX: Final = 4096
_WIRE_MEMO_MAX_LEN: Final = 1024


def route_from_wire(s: str) -> str:
    """Return the route for a pattern string read off the wire (NestJS server lookup).

    ``s`` is parsed as JSON; a string result is the route, a number gives
    :func:`js_number`, an object or array is normalized as by :func:`to_route`, and
    ``true``/``false``/``null`` give :data:`NO_ROUTE` (NestJS looks them up as
    non-strings and finds nothing). A string that is not JSON is its own route. JSON
    nested so deep that Python's parser gives up (about 1000 levels) is treated as not
    JSON; NestJS would reach no handler for it either.
    """
    if not s or s[0] not in _JSON_START:
        return s
    route = _WIRE_MEMO.get(s)
    if route is None:
        route = _route_from_json(s)
        if len(s) <= _WIRE_MEMO_MAX_LEN:
            if len(_WIRE_MEMO) >= _WIRE_MEMO_MAX:
                _WIRE_MEMO.clear()
            _WIRE_MEMO[s] = route
    return route


def _route_from_json(s: str) -> str:
    try:
        value = _decode(s)
    except (ValueError, RecursionError):
        return s
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return NO_ROUTE
    if isinstance(value, (int, float)):
        return js_number(value)
    return _object(value, 0)


class WildcardRoutes:
    """The handler routes of a server whose transport matches wildcards itself (MQTT topic
    filters, RabbitMQ topic patterns) rather than leaving it to the broker's subscription.

    ``exact`` holds every route; :meth:`match` gives the first route with one of
    ``wildcard_chars`` that ``matches(route, name)``, in registration order: NestJS tries
    its handlers in that order, after looking for a route equal to the name.
    """

    __slots__ = ("_matches", "exact", "wildcards")

    def __init__(
        self,
        routes: Iterable[str],
        wildcard_chars: str,
        matches: Callable[[str, str], bool],
    ) -> None:
        ordered = list(dict.fromkeys(routes))
        self.exact = frozenset(ordered)
        self.wildcards = [r for r in ordered if any(c in r for c in wildcard_chars)]
        self._matches = matches

    def match(self, name: str) -> str | None:
        for route in self.wildcards:
            if self._matches(route, name):
                return route
        return None

    def route_of(self, name: str) -> str | None:
        """``name`` if it is a route, else the first wildcard route matching it."""
        return name if name in self.exact else self.match(name)
