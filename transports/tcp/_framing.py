"""NestJS TCP framing: ``<length>#<json>``, the length in UTF-16 code units (PROTOCOL.md §2).

The length is JavaScript's ``string.length`` of the JSON text, so a body with characters
outside the BMP (which take two UTF-16 units) counts more units than characters.
"""

from __future__ import annotations

import codecs
import re

from polybus.errors import ProtocolError

__all__ = ["CorruptStream", "FrameDecoder", "frame"]

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


class CorruptStream(ProtocolError):
    """The stream broke the framing; ``frames`` are the complete frames cut before the
    corrupt one (answer or deliver them: they are valid)."""

    def __init__(self, message: str, frames: list[bytes]) -> None:
        super().__init__(message)
        self.frames = frames


class FrameDecoder:
    """Splits a byte stream into frame bodies; raises ``CorruptStream`` on corrupt input.

    Work is linear in the bytes fed: a frame still arriving is not looked at again until
    its byte count can be complete, and a non-ASCII body is counted in UTF-16 units once,
    the count carried across reads. ``examined`` totals the body bytes inspected.
    """

    __slots__ = ("_body", "_buf", "_counter", "_max_units", "_units", "examined")

    def __init__(self, max_units: int) -> None:
        self._buf = bytearray()
        """The incomplete tail: a length prefix, or a frame still arriving."""
        self._max_units = max_units
        self._body = -1
        """Where the buffered frame's body starts in ``_buf`` (-1: its prefix is incomplete)."""
        self._units = 0
        self._counter: _UnitCounter | None = None
        self.examined = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if not buf:
            return self._split(data, [])
        buf += data
        body = self._body
        if body < 0:  # a prefix of at most 12 digits was buffered
            data = bytes(buf)
            buf.clear()
            return self._split(data, [])
        try:
            end = self._body_end(buf, body)
        except ProtocolError as exc:
            buf.clear()
            raise CorruptStream(str(exc), []) from None
        if end is None:
            return []
        frames = [bytes(buf[body:end])]
        rest = bytes(buf[end:])
        buf.clear()
        return self._split(rest, frames)

    def _split(self, data: bytes, frames: list[bytes]) -> list[bytes]:
        """Frames cut from ``data`` (which starts at a frame boundary) appended to ``frames``;
        an incomplete tail is kept in ``_buf``."""
        pos = 0
        end = len(data)
        try:
            while pos < end:
                hash_at = data.find(b"#", pos, pos + _MAX_PREFIX_DIGITS + 1)
                if hash_at < 0:
                    if end - pos > _MAX_PREFIX_DIGITS:
                        raise ProtocolError("corrupted frame: no '#' after the length prefix")
                    self._body = -1
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
                if start + units <= end:  # the common case: a whole ASCII body, looked at once
                    chunk = data[start : start + units]
                    self.examined += units
                    if chunk.isascii():
                        frames.append(chunk)
                        pos = start + units
                        continue
                    self._counter = _UnitCounter(units)
                else:
                    self._counter = None
                self._units = units
                body_end = self._body_end(data, start)
                if body_end is None:
                    self._body = start - pos
                    break
                frames.append(data[start:body_end])
                pos = body_end
        except ProtocolError as exc:
            raise CorruptStream(str(exc), frames) from None
        if pos < end:
            self._buf += data[pos:]
        return frames

    def _body_end(self, source: bytes | bytearray, body: int) -> int | None:
        """Where the current frame's body, starting at ``body``, ends in ``source``; None
        while bytes are missing."""
        units = self._units
        counter = self._counter
        if counter is None:
            if len(source) - body < units:  # a unit takes at least one byte
                return None
            self.examined += units
            if source[body : body + units].isascii():
                return body + units
            counter = self._counter = _UnitCounter(units)
        before = counter.scanned
        end = counter.advance(source, body)
        self.examined += counter.scanned - before
        return end

    @property
    def buffered(self) -> int:
        return len(self._buf)


class _UnitCounter:
    """Counts the UTF-16 units of a UTF-8 body as its bytes arrive, each byte decoded once.

    It never reads past the body of a well-formed frame: ``left`` units still to come take
    at least ``left`` bytes, less the bytes of a character already begun (``pending``).
    """

    __slots__ = ("_decoder", "left", "scanned")

    def __init__(self, units: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.left = units
        self.scanned = 0
        """Body bytes decoded so far."""

    def advance(self, source: bytes | bytearray, body: int) -> int | None:
        """The body's end in ``source`` once ``left`` units are counted, else None."""
        decoder = self._decoder
        end = len(source)
        while self.left > 0:
            at = body + self.scanned
            if at >= end:
                return None
            want = max(1, self.left - len(decoder.getstate()[0]))
            piece = source[at : at + want]
            self.scanned += len(piece)
            try:
                text = decoder.decode(piece)
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"invalid UTF-8 in frame: {exc.reason}") from None
            self.left -= len(text) + len(_ASTRAL.findall(text))
        if self.left < 0:
            raise ProtocolError("corrupted frame: length splits a character")
        return body + self.scanned
