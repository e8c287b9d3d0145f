"""CPU the TCP frame decoder spends on one large frame arriving in small reads (issue 12, 4).

A 6 MB frame fed in 2 KiB pieces, once with an ASCII body and once with a non-ASCII one;
prints the process CPU seconds of each: ``python -m bench.proposals.tcp_decoder_cpu``.
"""

from __future__ import annotations

import time

import orjson

from polybus.transports.tcp import FrameDecoder, frame

FRAME_BYTES = 6_000_000
PIECE = 2048


def cpu_seconds(text: str) -> float:
    wire = frame(orjson.dumps({"pattern": "echo", "data": text, "id": "1"}))
    decoder = FrameDecoder(64 * 1024 * 1024)
    started = time.process_time()
    frames: list[bytes] = []
    for at in range(0, len(wire), PIECE):
        frames += decoder.feed(wire[at : at + PIECE])
    spent = time.process_time() - started
    assert len(frames) == 1 and decoder.buffered == 0
    return spent


def main() -> None:
    ascii_cpu = cpu_seconds("a" * FRAME_BYTES)
    other_cpu = cpu_seconds("é" * (FRAME_BYTES // 2))  # two bytes a character
    print(f"6 MB frame, {PIECE} B reads: CPU ASCII {ascii_cpu:.3f} s, non-ASCII {other_cpu:.3f} s")


if __name__ == "__main__":
    main()
