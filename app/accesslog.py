"""The access log: one line per request (JSON or text), written in batches.

Not the logging module: its record, formatter and handler machinery plus a
flush (one write(2)) per line cost more than the rest of a request's
bookkeeping together (measured with py-spy under the benchmark). Entries are
kept with the moment they were written (one `time.time()`), and turned into
lines when the batch is written: at most `interval` seconds later, or when
the batch is large, and at shutdown. The `time` field (RFC 3339, UTC, ms) is
formatted there, its date-and-seconds part once per second of the batch.

    json: {"time":"2026-12-01T22:53:00.123Z","request_id":"...","method":"POST",...}
    text: 2026-12-01T22:53:00.123Z 200 POST /v1/chat/completions key=alice model=gpt-4o ...
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, BinaryIO

import orjson

FLUSH_ENTRIES = 512

# In a text line these come first, bare; everything else follows as name=value.
_HEAD = ("status", "method", "path")
_SKIP = frozenset({*_HEAD, "request_id"})


def rfc3339(ts: float) -> str:
    """`2026-12-01T22:53:00.123Z`: UTC, milliseconds."""
    return _Clock()(ts)


class _Clock:
    """RFC 3339 times for a batch: the `%Y-%m-%dT%H:%M:%S` part formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((ts - second) * 1000):03d}Z"


def json_line(when: str, entry: dict[str, Any]) -> bytes:
    body = orjson.dumps(entry)
    head = b'{"time":"' + when.encode() + b'"'
    return head + (b"," + body[1:] if len(body) > 2 else b"}") + b"\n"


def text_line(when: str, entry: dict[str, Any]) -> bytes:
    parts = [when, *(str(entry[k]) for k in _HEAD if entry.get(k) is not None)]
    for name, value in entry.items():
        if name in _SKIP or value is None or value is False or value == {}:
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        parts.append(f"{name}={value}")
    if entry.get("request_id"):
        parts.append(f"id={entry['request_id']}")
    return (" ".join(parts) + "\n").encode("utf-8", "replace")


class AccessLog:
    def __init__(
        self, stream: BinaryIO | None = None, interval: float = 0.2, fmt: str = "json"
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._interval = interval
        self._render = text_line if fmt == "text" else json_line
        self._entries: list[tuple[float, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, entry: dict[str, Any]) -> None:
        self._entries.append((time.time(), entry))
        if len(self._entries) >= FLUSH_ENTRIES:
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
        if not self._entries:
            return
        clock = _Clock()
        render = self._render
        data = b"".join([render(clock(ts), entry) for ts, entry in self._entries])
        self._entries.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed or full: never let logging break a request
