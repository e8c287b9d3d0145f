"""NestJS TCP framing: ``<length>#<json>``, the length in UTF-16 code units (PROTOCOL.md §2).

The length is JavaScript's ``string.length`` of the JSON text, so a body with characters
outside the BMP (which take two UTF-16 units) counts more units than characters.
"""

from __future__ import annotations

import codecs
import re

from polybus.errors import ProtocolError

__all__ = ["FrameDecoder", "frame"]

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_MAX_PREFIX_DIGITS = 12


def frame(body: bytes) -> bytes:
    """``<utf-16 length>#<body>`` for a UTF-8 JSON body."""
    if body.isascii():
        units = len(body)
    else:
        text = body.decode("utf-8")
        units = len(text) + len(_ASTRAL.findall(text))
    return b"%d#%b" % (units, body)


class FrameDecoder:
    """Splits a byte stream into frame bodies; raises ``ProtocolError`` on corrupt input."""

    __slots__ = ("_buf", "_max_units", "_need")

    def __init__(self, max_units: int) -> None:
        self._buf = bytearray()
        self._max_units = max_units
        self._need = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if buf:
            buf += data
            if self._need > len(buf):
                return []
            data = bytes(buf)
            buf.clear()
        # Frames are cut from immutable bytes (one copy each); only an incomplete tail is
        # kept in the bytearray, which grows in place while a large frame arrives.
        self._need = 0
        frames: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            hash_at = data.find(b"#", pos, pos + _MAX_PREFIX_DIGITS + 1)
            if hash_at < 0:
                if end - pos > _MAX_PREFIX_DIGITS:
                    raise ProtocolError("corrupted frame: no '#' after the length prefix")
                break
            prefix = data[pos:hash_at]
            if not prefix.isdigit():
                raise ProtocolError(f"corrupted frame length {prefix[:20]!r}")
            units = int(prefix)
            if units > self._max_units:
                raise ProtocolError(
                    f"frame of {units} characters exceeds the maximum of {self._max_units}"
                )
            start = hash_at + 1
            if start + units > end:
                self._need = start + units - pos  # at least this many bytes from the frame start
                break
            chunk = data[start : start + units]
            if chunk.isascii():
                frames.append(chunk)
                pos = start + units
                continue
            size = _utf8_size_of_units(data, start, units)
            if size is None:
                self._need = end - pos + 1  # some characters are still on their way
                break
            frames.append(data[start : start + size])
            pos = start + size
        if pos < end:
            buf += data[pos:]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _utf8_size_of_units(data: bytes, start: int, units: int) -> int | None:
    """Bytes that hold ``units`` UTF-16 units from ``start``; None when more data is needed."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(data[start : start + 3 * units], final=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in frame: {exc.reason}") from None
    if len(text) + len(_ASTRAL.findall(text)) < units:
        return None
    # chars + (astral chars among them) grows by 1 or 2 per char: start from a lower bound
    # and walk forward to the exact count.
    chars = units - len(_ASTRAL.findall(text, 0, units))
    counted = chars + len(_ASTRAL.findall(text, 0, chars))
    while counted < units:
        counted += 2 if ord(text[chars]) > 0xFFFF else 1
        chars += 1
    if counted != units:
        raise ProtocolError("corrupted frame: length splits a character")
    return len(text[:chars].encode("utf-8"))
