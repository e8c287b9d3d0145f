"""Pattern → route strings (polybus.patterns) against NestJS 12.1.1.

The expected values outside the vectors file were also read off Node (V8 + ICU).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from enum import Enum, IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybus import patterns
from polybus.patterns import NO_ROUTE, js_number, route_from_wire, to_route

VECTORS_PATH = Path(__file__).parent.parent / "data" / "pattern-vectors.jsonl"
VECTORS = [
    (n, json.loads(line))
    for n, line in enumerate(VECTORS_PATH.read_text(encoding="utf-8").splitlines(), 1)
    if line.strip()
]


def test_vectors_file_is_complete() -> None:
    assert len(VECTORS) == 415


@pytest.mark.parametrize(("pattern", "route"), [(v["pattern"], v["route"]) for _, v in VECTORS])
def test_vector(pattern: object, route: str) -> None:
    assert to_route(pattern) == route


@pytest.mark.parametrize(
    ("pattern", "route"),
    [(v["pattern"], v["route"]) for _, v in VECTORS if not isinstance(v["pattern"], str)],
)
def test_vector_arriving_as_json_text(pattern: object, route: str) -> None:
    # What a NestJS TCP/RMQ client puts in the packet for an object pattern.
    assert route_from_wire(json.dumps(pattern, ensure_ascii=False)) == route
    assert route_from_wire(json.dumps(pattern, indent=1)) == route


# --------------------------------------------------------------------------- js_number


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1.0, "1"),
        (100, "100"),
        (1.5, "1.5"),
        (-0.5, "-0.5"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1 / 3, "0.3333333333333333"),
        (-0.0, "0"),
        (0, "0"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (123e-20, "1.23e-18"),
        (5e-324, "5e-324"),
        (1e20, "100000000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (9.999999999999999e20, "999999999999999900000"),
        (1e21, "1e+21"),
        (1e301, "1e+301"),
        (-1.5e300, "-1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),  # rounded to a double, as in JS
        (-(2**53) - 2, "-9007199254740994"),
        (2**60, "1152921504606847000"),
        (12345678901234567890, "12345678901234567000"),
        (10**21, "1e+21"),
        (10**400, "Infinity"),
        (-(10**400), "-Infinity"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
    ],
)
def test_js_number(n: int | float, text: str) -> None:
    assert js_number(n) == text


def test_js_number_subclasses_and_bad_types() -> None:
    class Code(IntEnum):
        OK = 7

    assert js_number(Code.OK) == "7"
    with pytest.raises(TypeError):
        js_number(True)
    with pytest.raises(TypeError):
        js_number(cast(Any, "1"))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_js_number_round_trips(x: float) -> None:
    text = js_number(x)
    assert float(text) == x
    assert " " not in text and not text.endswith(".0")


# --------------------------------------------------------------------------- objects


def test_key_insertion_order_does_not_matter() -> None:
    expected = '{"cmd":"x","Cmd":4,"user_id":3,"userId":1,"UserId":2}'
    items = [("userId", 1), ("UserId", 2), ("cmd", "x"), ("user_id", 3), ("Cmd", 4)]
    assert to_route(dict(items)) == expected
    assert to_route(dict(reversed(items))) == expected
    assert to_route({"role": "math", "cmd": "sum"}) == to_route({"cmd": "sum", "role": "math"})


@given(
    st.dictionaries(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6),
        st.integers(),
        max_size=patterns.MAX_KEYS,
    ),
    st.randoms(),
)
def test_ascii_key_order_is_independent_of_insertion_order(
    d: dict[str, int], rnd: random.Random
) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert to_route(dict(items)) == to_route(d)


def test_keys_that_collate_equal_keep_object_keys_order() -> None:
    # Array-index keys come first in Object.keys(), then insertion order.
    assert to_route({"1\x00": 1, "1": 2}) == '{"1":2,"1\x00":1}'
    assert to_route({"e\u0301": 1, "\u00e9": 2}) == '{"e\u0301":1,"\u00e9":2}'
    assert to_route({"\u00e9": 2, "e\u0301": 1}) == '{"\u00e9":2,"e\u0301":1}'


def test_escaping() -> None:
    assert to_route('he said "hi"\\') == 'he said "hi"\\'  # a top-level string is as is
    pattern = {"q": 'he said "hi"', 'k"e\\y': "back\\slash", "nl": "a\nb"}
    assert to_route(pattern) == '{"k\\"e\\\\y":"back\\\\slash","nl":"a\nb","q":"he said \\"hi\\""}'


def test_lists_and_tuples_are_objects_with_index_keys() -> None:
    expected = '{"0":0,"1":1,"10":10,"11":11,"12":12,"13":13,"14":14,"15":15,"16":16,'
    expected += '"17":17,"18":18,"19":19,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7,"8":8,"9":9}'
    assert to_route(list(range(20))) == expected
    assert to_route(tuple(range(20))) == expected
    assert to_route({"a": list(range(21)), "b": list(range(20))}) == (
        '{"a":[TOO_MANY_KEYS],"b":' + expected + "}"
    )
    assert to_route({"e": [], "f": {}}) == '{"e":{},"f":{}}'


def test_depth_limit() -> None:
    deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}
    assert to_route(deep) == '{"a":{"b":{"c":{"d":{"e":{"f":[MAX_DEPTH_REACHED]}}}}}}'
    assert to_route([[[[[[[1]]]]]]]) == '{"0":{"0":{"0":{"0":{"0":{"0":[MAX_DEPTH_REACHED]}}}}}}'
    leaves = {"a": {"b": {"c": {"d": {"e": {"f": "deep string", "g": [], "h": {}}}}}}}
    assert to_route(leaves) == (
        '{"a":{"b":{"c":{"d":{"e":{"f":"deep string",'
        '"g":[MAX_DEPTH_REACHED],"h":[MAX_DEPTH_REACHED]}}}}}}'
    )
    looped: dict[str, object] = {}
    looped["self"] = looped
    assert to_route(looped) == (
        '{"self":{"self":{"self":{"self":{"self":{"self":[MAX_DEPTH_REACHED]}}}}}}'
    )
    # Depth is checked before the key count, and nothing past a limit is looked at.
    assert to_route({"a": {"b": {"c": {"d": {"e": {"f": {str(i): set() for i in range(30)}}}}}}})
    assert to_route({str(i): object() for i in range(21)}) == "[TOO_MANY_KEYS]"


def test_subclasses_and_other_mappings() -> None:
    class Cmd(str, Enum):
        SUM = "sum"

    class Level(IntEnum):
        HIGH = 3

    assert to_route(Cmd.SUM) == "sum"
    assert type(to_route(Cmd.SUM)) is str
    assert to_route(Level.HIGH) == "3"
    assert to_route({Cmd.SUM: Cmd.SUM, "level": Level.HIGH}) == '{"level":3,"sum":"sum"}'
    assert to_route(MappingProxyType({"b": 1, "a": True})) == '{"a":true,"b":1}'
    assert to_route({"x": MappingProxyType({"n": None})}) == '{"x":{"n":null}}'


@pytest.mark.parametrize("pattern", [None, True, False, {1, 2}, object(), b"sum", 1j])
def test_unsupported_pattern_types(pattern: object) -> None:
    with pytest.raises(TypeError):
        to_route(pattern)


@pytest.mark.parametrize(
    "pattern", [{1: "a"}, {"a": 1, 2: "b"}, {"a": {"b", "c"}}, {"a": [b"x"]}, {"Ab": {(1,): 2}}]
)
def test_unsupported_keys_and_values(pattern: object) -> None:
    with pytest.raises(TypeError, match="message pattern"):
        to_route(pattern)


# --------------------------------------------------------------------------- fast path

LOWER_KEYS = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", max_size=6), unique=True, max_size=20
)


@given(LOWER_KEYS)
@settings(max_examples=300)
def test_fast_path_agrees_with_collation(keys: list[str]) -> None:
    by_collation = [k for k, _ in patterns._collate([(k, None) for k in keys])]
    assert sorted(keys) == by_collation
    d = dict.fromkeys(keys, 1)
    collated = "{" + ",".join(f'"{k}":1' for k in by_collation) + "}"
    assert to_route(d) == collated


def test_collator_is_loaded_lazily() -> None:
    code = (
        "import sys\n"
        "from polybus.patterns import to_route, route_from_wire\n"
        "to_route({'cmd': 'sum', 'role': 'math', 'n': [1, 2]})\n"
        'route_from_wire(\'{"cmd":"sum"}\')\n'
        "assert 'pyuca' not in sys.modules, 'collator loaded for lower-case keys'\n"
        "assert to_route({'B': 1, 'a': 1}) == '{\"a\":1,\"B\":1}'\n"
        "assert 'pyuca' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- wire


def test_route_from_wire_object_text_equals_object() -> None:
    assert route_from_wire('{"role":"math","cmd":"sum"}') == to_route(
        {"cmd": "sum", "role": "math"}
    )
    assert route_from_wire(' { "cmd" : "sum" , "n" : 1.50 } ') == '{"cmd":"sum","n":1.5}'
    assert (
        route_from_wire('{"B":1,"a":{"y":[true,null]}}') == '{"a":{"y":{"0":true,"1":null}},"B":1}'
    )


@pytest.mark.parametrize(
    ("wire", "route"),
    [
        ("sum", "sum"),
        ("user.created", "user.created"),
        ("", ""),
        ("1e3", "1000"),
        ("-0", "0"),
        ("1.50", "1.5"),
        (" 7", "7"),
        ("1E400", "Infinity"),
        ("1" * 300, "1.1111111111111112e+299"),
        ("1" * 400, "Infinity"),
        ("1" * 5000, "Infinity"),
        ("-" + "9" * 30, "-1e+30"),
        ('"x"', "x"),
        ("[1]", '{"0":1}'),
        ('{"a":1,"a":2}', '{"a":2}'),
        # Not JSON for JSON.parse: the text is its own route.
        ("01", "01"),
        ("1.", "1."),
        ("-", "-"),
        ("NaN", "NaN"),
        ("-Infinity", "-Infinity"),
        ('{"a":NaN}', '{"a":NaN}'),
        ('{"cmd":', '{"cmd":'),
        ("\ufeff1", "\ufeff1"),
        ("nope", "nope"),
        ("trueish", "trueish"),
        ('["a\nb"]', '["a\nb"]'),  # raw control character in a JSON string
    ],
)
def test_route_from_wire(wire: str, route: str) -> None:
    assert route_from_wire(wire) == route
    assert route_from_wire(wire) == route  # memoized


@pytest.mark.parametrize("wire", ["true", "false", "null", " null "])
def test_route_from_wire_literals_reach_no_route(wire: str) -> None:
    assert route_from_wire(wire) == NO_ROUTE
    assert to_route(wire) == wire  # registering that string gives an unreachable handler


def test_route_from_wire_gives_up_on_absurd_nesting() -> None:
    s = "[" * 100_000 + "]" * 100_000
    assert route_from_wire(s) == s


def test_route_from_wire_memo_is_bounded() -> None:
    for i in range(patterns._WIRE_MEMO_MAX + 10):
        assert route_from_wire(f'{{"n":{i}}}') == f'{{"n":{i}}}'
    assert len(patterns._WIRE_MEMO) <= patterns._WIRE_MEMO_MAX
    big = '{"k":"' + "x" * 5000 + '"}'
    assert route_from_wire(big) == big
    assert big not in patterns._WIRE_MEMO


def test_plan_cache_is_bounded() -> None:
    for i in range(patterns._PLANS_MAX + 10):
        assert to_route({f"K{i}": 1, "a": 2}) == f'{{"a":2,"K{i}":1}}'
    assert len(patterns._PLANS) <= patterns._PLANS_MAX
