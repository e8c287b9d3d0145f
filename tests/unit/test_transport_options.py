"""The option helpers every adapter shares: typed values from text, the size check, TLS
file aliases, and the merging of headers with the caller's deadline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from polybus.config import TLS_FILE_ALIASES, TransportOptions, coerce_options
from polybus.errors import ConfigError, ProtocolError
from polybus.packets import DEADLINE_HEADER, merge_headers, parse_deadline_value
from polybus.transports.tcp import TcpOptions


@dataclass
class Sample(TransportOptions):
    name: str = "x"
    flag: bool = False
    count: int = 1
    limit: int | None = None
    ratio: float = 0.5
    hosts: list[str] = field(default_factory=list)
    acks: int | str = -1
    extra: dict[str, str] | None = None
    anything: Any = None


def test_text_becomes_the_type_of_each_option() -> None:
    options = Sample().with_query(
        {
            "name": "svc",
            "flag": " Yes ",
            "count": "7",
            "limit": "3",
            "ratio": "0.25",
            "hosts": "a:1, b:2,,",
            "acks": "all",
            "anything": "text",
            "maxMessageBytes": "1024",
        }
    )
    assert (options.name, options.flag, options.count, options.limit) == ("svc", True, 7, 3)
    assert options.ratio == 0.25 and options.hosts == ["a:1", "b:2"]
    assert options.acks == "all" and options.anything == "text"
    assert options.max_message_bytes == 1024
    assert Sample().with_query({"acks": "1"}).acks == 1
    assert Sample(count="5").count == 5  # type: ignore[arg-type]  # direct construction too


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"flag": "maybe"}, "option flag must be a boolean, got 'maybe'"),
        ({"count": "lots"}, "option count must be an integer, got 'lots'"),
        ({"limit": "1.5"}, "option limit must be an integer, got '1.5'"),
        ({"ratio": "half"}, "option ratio must be a number, got 'half'"),
        ({"extra": "a=b"}, "option extra cannot be given as text, got 'a=b'"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_option_and_the_value(
    query: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Sample().with_query(query)


def test_coerce_options_leaves_other_values_alone() -> None:
    values = {"count": 3, "flag": "off", "unknown": "1", "name": "7"}
    assert coerce_options(Sample, values) == {
        "count": 3,
        "flag": False,
        "unknown": "1",
        "name": "7",
    }


def test_query_aliases_rename_short_names() -> None:
    options = TcpOptions.from_url("tcps://h:1?ca=/ca.pem&certfile=/c.pem&key=/k.pem&tls=0")
    assert (options.ca_file, options.cert_file, options.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert options.tls is False
    assert set(TLS_FILE_ALIASES.values()) == {"ca_file", "cert_file", "key_file"}


def test_check_size_refuses_what_exceeds_max_message_bytes() -> None:
    options = Sample(max_message_bytes=4)
    assert options.check_size(b"1234") == b"1234"
    with pytest.raises(ProtocolError, match="message of 5 bytes exceeds max_message_bytes=4"):
        options.check_size(b"12345")
    with pytest.raises(ProtocolError, match="reply of 5 bytes"):
        options.check_size(b"12345", "reply")


def test_merge_headers_layers_and_deadline() -> None:
    assert merge_headers(None, {}) is None
    assert merge_headers({"a": "1", "b": "1"}, {"b": "2"}) == {"a": "1", "b": "2"}
    merged = merge_headers({"a": "1"}, None, deadline=12.3456)
    assert merged == {"a": "1", DEADLINE_HEADER: "12.346"}
    base = {"a": "1"}
    assert merge_headers(base, {"b": "2"}) is not base and base == {"a": "1"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12.5", 12.5), (b"7", 7.0), ("soon", None), ("inf", None), (None, None)],
)
def test_parse_deadline_value(raw: Any, expected: float | None) -> None:
    assert parse_deadline_value(raw) == expected
