"""TCP framing: the UTF-16 length rule, incremental decoding, and corrupt input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybus.errors import ProtocolError
from polybus.transports.tcp import FrameDecoder, frame
from polybus.transports.tcp._framing import CorruptStream


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_length_counts_utf16_units_like_javascript() -> None:
    body = '{"t":"héllo – ✓ 😀"}'.encode()
    assert frame(body) == b"%d#" % utf16_units(body.decode()) + body
    assert frame(b'{"a":1}') == b'7#{"a":1}'


def test_observed_nestjs_frames_decode() -> None:
    wire = (
        b'43#{"response":1,"id":"2609b67431f4af0f82243"}'
        b'43#{"response":2,"id":"2609b67431f4af0f82243"}'
    )
    assert FrameDecoder(1 << 20).feed(wire) == [
        b'{"response":1,"id":"2609b67431f4af0f82243"}',
        b'{"response":2,"id":"2609b67431f4af0f82243"}',
    ]


json_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=60
).map(lambda s: '{"v":"' + s.replace("\\", "").replace('"', "") + '"}')


@settings(max_examples=300, deadline=None)
@given(st.lists(json_text, min_size=1, max_size=8), st.data())
def test_frames_survive_any_split(bodies: list[str], data: st.DataObject) -> None:
    wire = b"".join(frame(b.encode()) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = FrameDecoder(1 << 20)
    out: list[bytes] = []
    last = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[last:cut])
        last = cut
    assert [b.decode() for b in out] == bodies
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "wire",
    [b"abc#{}", b"12x#{}", b"-5#{}", b"9999999999999999#", b"{" * 20],
)
def test_corrupt_prefix_raises(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(1 << 20).feed(wire)


def test_oversized_frame_is_refused_before_buffering() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder(100).feed(b"101#")


def test_invalid_utf8_in_frame_raises() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        FrameDecoder(100).feed(b"3#\xff\xfe\xfd")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes_the_decoder(garbage: bytes) -> None:
    decoder = FrameDecoder(1 << 16)
    with contextlib.suppress(ProtocolError):
        decoder.feed(garbage)


def test_frames_before_a_corrupt_one_are_handed_over() -> None:
    good = [b'{"id":"1"}', '{"t":"h\u00e9 \U0001f600"}'.encode()]
    wire = b"".join(frame(b) for b in good) + b"zz#{}"
    with pytest.raises(CorruptStream) as info:
        FrameDecoder(1 << 20).feed(wire)
    assert info.value.frames == good

    decoder = FrameDecoder(1 << 20)  # the first frame was still arriving
    first = frame(good[1])
    assert decoder.feed(first[:5]) == []
    with pytest.raises(CorruptStream) as info:
        decoder.feed(first[5:] + frame(good[0]) + b"99999999999#")
    assert info.value.frames == [good[1], good[0]]


@settings(max_examples=200, deadline=None)
@given(st.lists(json_text, min_size=1, max_size=6), st.data())
def test_every_complete_frame_before_corruption_survives_any_split(
    bodies: list[str], data: st.DataObject
) -> None:
    wire = b"".join(frame(b.encode()) for b in bodies) + b"x#"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = FrameDecoder(1 << 20)
    out: list[bytes] = []
    last = 0
    with pytest.raises(CorruptStream):
        for cut in [*cuts, len(wire)]:
            try:
                out += decoder.feed(wire[last:cut])
            except CorruptStream as exc:
                out += exc.frames
                raise
            last = cut
    assert [b.decode() for b in out] == bodies


@pytest.mark.parametrize("char", ["\u00e9", "\u2713", "\U0001f600", "a\u00e9\U0001f600"])
def test_a_large_frame_in_small_reads_is_examined_once(char: str) -> None:
    """Linear, not quadratic: a 6 MB body fed 2 KiB at a time is looked at about once."""
    body = ('{"data":"' + char * (6_000_000 // len(char.encode())) + '"}').encode()
    wire = frame(body)
    decoder = FrameDecoder(1 << 24)
    out: list[bytes] = []
    for at in range(0, len(wire), 2048):
        out += decoder.feed(wire[at : at + 2048])
    assert out == [body]
    assert decoder.examined <= 2 * len(body), decoder.examined
