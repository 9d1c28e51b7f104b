"""Real audio bytes for the audio operations: a short WAV to speak, the length of one heard."""

from __future__ import annotations

import math
import struct
from typing import Final

RATE: Final = 8000  # samples per second, mono, 16-bit
_TONE_HZ: Final = 440.0
_GUESS_BYTES_PER_SECOND: Final = 16000  # 128 kbit/s: what a non-WAV upload is taken to be


def pcm(seconds: float) -> bytes:
    """A 440 Hz tone of ``seconds`` as little-endian 16-bit mono samples at `RATE`."""
    count = int(RATE * seconds)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * _TONE_HZ * i / RATE)))
        for i in range(count)
    )


def wav(samples: bytes) -> bytes:
    """A RIFF/WAVE file around 16-bit mono samples at `RATE`."""
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16)
    return b"".join(
        (
            b"RIFF",
            struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(samples)),
            b"WAVE",
            b"fmt ",
            struct.pack("<I", len(fmt)),
            fmt,
            b"data",
            struct.pack("<I", len(samples)),
            samples,
        )
    )


def duration(audio: bytes) -> float:
    """Seconds of audio: from a WAV header when there is one, else guessed from the size."""
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        byte_rate = 0
        pos = 12
        while pos + 8 <= len(audio):
            kind = audio[pos : pos + 4]
            (size,) = struct.unpack("<I", audio[pos + 4 : pos + 8])
            if kind == b"fmt " and size >= 12:
                (byte_rate,) = struct.unpack("<I", audio[pos + 16 : pos + 20])
            elif kind == b"data" and byte_rate > 0:
                return float(min(size, len(audio) - pos - 8) / byte_rate)
            pos += 8 + size + (size & 1)
    return len(audio) / _GUESS_BYTES_PER_SECOND
