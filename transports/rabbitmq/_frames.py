"""AMQP 0-9-1 frames polybus writes itself: the content header (pamqp's generic encoder is
the hot spot of a publish), content bodies and ``basic.ack``/``basic.nack``."""

from __future__ import annotations

import struct
from typing import Any

from polybus.errors import ProtocolError

__all__ = ["Properties", "append_body_frames", "settle_frame"]

_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_FIXED = struct.Struct(">HHQH")
_FRAME_END = b"\xce"
_SETTLE_FRAME = struct.Struct(">BHIHHQB")  # method frame: Basic.Ack (60, 80) / Basic.Nack (60, 120)


def _short(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ProtocolError(f"AMQP short string over 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


class Properties:
    """The basic properties polybus sends, and their content-header frame."""

    __slots__ = ("correlation_id", "delivery_mode", "expiration", "headers", "priority", "reply_to")

    def __init__(
        self,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        expiration: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.expiration = expiration
        self.headers = headers

    def header_frame(self, channel: int, body_size: int) -> bytes:
        """The content-header frame (AMQP 0-9-1 §4.2.6.1, property flags from bit 15 down)."""
        flags = 0
        parts: list[bytes] = []
        if self.headers:
            from pamqp.encode import field_table

            flags |= 0x2000
            parts.append(field_table(self.headers))
        if self.delivery_mode is not None:
            flags |= 0x1000
            parts.append(bytes((self.delivery_mode,)))
        if self.priority is not None:
            flags |= 0x0800
            parts.append(bytes((self.priority,)))
        if self.correlation_id is not None:
            flags |= 0x0400
            parts.append(_short(self.correlation_id))
        if self.reply_to is not None:
            flags |= 0x0200
            parts.append(_short(self.reply_to))
        if self.expiration is not None:
            flags |= 0x0100
            parts.append(_short(self.expiration))
        payload = _HEADER_FIXED.pack(60, 0, body_size, flags) + b"".join(parts)
        return _FRAME_HEAD.pack(2, channel, len(payload)) + payload + _FRAME_END


def append_body_frames(out: list[bytes], channel: int, body: bytes, frame_max: int) -> None:
    """Append the content-body frames of ``body`` to ``out`` (none for an empty body)."""
    if len(body) <= frame_max:
        if body:
            out.append(_FRAME_HEAD.pack(3, channel, len(body)))
            out.append(body)
            out.append(_FRAME_END)
        return
    view = memoryview(body)
    for start in range(0, len(body), frame_max):
        chunk = view[start : start + frame_max]
        out.append(_FRAME_HEAD.pack(3, channel, len(chunk)))
        out.append(bytes(chunk))
        out.append(_FRAME_END)


def settle_frame(channel: int, tag: int, ok: bool, requeue: bool = False) -> bytes:
    """``basic.ack`` (``ok``) or ``basic.nack`` of delivery ``tag``, as one method frame."""
    method = _SETTLE_FRAME.pack(
        1, channel, 13, 60, 80 if ok else 120, tag, 2 if requeue and not ok else 0
    )
    return method + _FRAME_END
