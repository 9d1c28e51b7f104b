"""The access log: one JSON line per request, written in batches.

Not the logging module: its record, formatter and handler machinery plus a
flush (one write(2)) per line cost more than the rest of a request's
bookkeeping together (measured with py-spy under the benchmark). Lines are
appended to a buffer and written out together at most `interval` seconds
later, or when the buffer is large, and at shutdown.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, BinaryIO

import orjson

FLUSH_BYTES = 64 * 1024


class AccessLog:
    def __init__(self, stream: BinaryIO | None = None, interval: float = 0.2) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._interval = interval
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed or full: never let logging break a request
