"""Records a fetch left out are fetched again (polybus.transports.kafka._holes).

The decision alone, on plain records; tests/integration/test_kafka.py shows it against a
real broker that leaves records out of fetches under concurrent producers.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest

from polybus.transports.kafka import _holes
from polybus.transports.kafka._holes import Holes

TP = namedtuple("TP", "topic partition")("replies", 0)
Rec = namedtuple("Rec", "offset")


class Seeks:
    """Stands in for the consumer: records where it was asked to read from."""

    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


def records(*offsets: int) -> list[Any]:
    return [Rec(offset) for offset in offsets]


def test_contiguous_records_are_all_taken() -> None:
    consumer = Seeks()
    fetched = records(10, 11, 12)
    assert Holes(consumer).cut(TP, fetched, 10) == fetched
    assert Holes(consumer).cut(TP, fetched, None) == fetched
    assert consumer.seeks == []


def test_records_below_the_expected_offset_do_not_make_a_hole() -> None:
    consumer = Seeks()
    fetched = records(8, 9, 10, 11)
    assert Holes(consumer).cut(TP, fetched, 10) == fetched
    assert consumer.seeks == []


@pytest.mark.parametrize(
    ("offsets", "expected", "taken", "missing"),
    [
        ((12, 13), 10, (), 10),  # the fetch started past where it was asked to
        ((10, 11, 13, 14), 10, (10, 11), 12),  # a batch left out in the middle
        ((20, 21, 23), None, (20, 21), 22),  # first fetch: only the middle is known
    ],
)
def test_records_are_taken_up_to_the_missing_offset_which_is_fetched_again(
    offsets: tuple[int, ...], expected: int | None, taken: tuple[int, ...], missing: int
) -> None:
    consumer = Seeks()
    got = Holes(consumer).cut(TP, records(*offsets), expected)
    assert [r.offset for r in got] == list(taken)
    assert consumer.seeks == [(TP, missing)]


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The clock the patience is measured on: ``now[0]`` seconds."""
    clock = [100.0]
    monkeypatch.setattr(_holes.time, "monotonic", lambda: clock[0])
    return clock


def test_a_hole_that_stays_is_taken_as_real_after_the_patience(now: list[float]) -> None:
    consumer = Seeks()
    holes = Holes(consumer)
    fetched = records(10, 12)
    assert holes.cut(TP, fetched, 10) == fetched[:1]
    now[0] += _holes.PATIENCE / 2
    assert holes.cut(TP, fetched[1:], 11) == []  # still missing: fetched again
    assert consumer.seeks == [(TP, 11), (TP, 11)]
    now[0] += _holes.PATIENCE
    assert holes.cut(TP, fetched[1:], 11) == fetched[1:]  # real: read on past it
    assert len(consumer.seeks) == 2


def test_a_hole_that_fills_starts_the_patience_again_for_the_next_one(now: list[float]) -> None:
    consumer = Seeks()
    holes = Holes(consumer)
    assert holes.cut(TP, records(10, 12), 10) == records(10)
    now[0] += _holes.PATIENCE * 2
    assert holes.cut(TP, records(11, 12, 14), 11) == records(11, 12)  # 11 came; 13 is new
    assert consumer.seeks == [(TP, 11), (TP, 13)]
