"""The last minutes of traffic, kept in memory for the status page.

`Recent.add` is the only call on the hot path (from `handler._finish`): it
appends the finished request's outcome, as a tuple of plain values, to a
bounded ring and bumps a per-minute counter - no parsing.
Everything the page shows (error rate and p50 latency per deployment, the
requests-per-minute chart) is worked out from that at render time by
`summarize` and `per_minute`, pure functions.

Each process keeps its own window: with several workers or replicas the page
shows the one that answered.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from app.routing import Target

MAX_EVENTS = 5000  # requests kept for per-deployment health
MINUTES = 30  # the chart's span, and how long the per-minute counters live
HEALTH_WINDOW = 15 * 60.0  # seconds of history behind error rate and p50


class TraceLike(Protocol):
    @property
    def target(self) -> Target | None: ...
    @property
    def failures(self) -> list[tuple[Target, str]]: ...


class RecordLike(Protocol):
    """What `app.handler.Record` offers; only read at render time."""

    @property
    def status(self) -> int: ...
    @property
    def ttft(self) -> float | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def trace(self) -> TraceLike: ...


# (at, duration, status, ttft, error, served by "resource/deployment", failed attempts)
# Only atomic values and plain tuples: the garbage collector stops tracking such
# tuples, so a full window adds nothing to every collection's work.
Event = tuple[float, float, int, float | None, str | None, str | None, tuple[tuple[str, str], ...]]


def event_of(rec: RecordLike, at: float, duration: float) -> Event:
    trace = rec.trace
    final = trace.target
    failures = tuple((t.id, reason) for t, reason in trace.failures) if trace.failures else ()
    return (at, duration, rec.status, rec.ttft, rec.error, final.id if final else None, failures)


class Recent:
    __slots__ = ("events", "minutes")

    def __init__(self, maxlen: int = MAX_EVENTS) -> None:
        self.events: deque[Event] = deque(maxlen=maxlen)
        self.minutes: dict[int, list[int]] = {}  # minute number -> [requests, failed]

    def add(self, rec: RecordLike, duration: float) -> None:
        now = time.time()
        self.events.append(event_of(rec, now, duration))
        minute = int(now // 60)
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = [0, 0]
            for old in [m for m in self.minutes if m <= minute - MINUTES]:
                del self.minutes[old]
        counts[0] += 1
        status = rec.status
        if status >= 500 or status == 429:
            counts[1] += 1


@dataclass
class Health:
    """One deployment's recent attempts."""

    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    last_error: str | None = None
    streak: int = 0  # failed attempts since the last one that worked: failing right now

    @property
    def attempts(self) -> int:
        return self.ok + self.failed

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.attempts if self.attempts else None

    @property
    def p50(self) -> float | None:
        return median(self.latencies)


def median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def summarize(events: list[Event], now: float, window: float = HEALTH_WINDOW) -> dict[str, Health]:
    """Per deployment id (`resource/deployment`): attempts that worked or failed.

    A failed attempt is one the failover loop moved on from (error, timeout,
    throttled, key rejected, not found) or a stream that broke mid-way; a
    working one is the attempt whose answer was relayed. Latency is the time
    to the first byte of the answer as the caller saw it.
    """
    out: dict[str, Health] = {}
    for at, duration, status, ttft, error, final, failures in events:
        if at < now - window:
            continue
        for target_id, reason in failures:
            h = out.setdefault(target_id, Health())
            h.failed += 1
            h.streak += 1
            h.last_error = reason
        if final is None:
            continue
        h = out.setdefault(final, Health())
        if error is None and status not in (0, 499):
            h.ok += 1
            h.streak = 0
            h.latencies.append(ttft if ttft is not None else duration)
        elif error == "upstream_stream_error" or (
            error not in (None, "client_disconnected")
            and not (failures and failures[-1][0] == final)
        ):
            h.failed += 1
            h.streak += 1
            h.last_error = "broke mid-response"
    return out


def per_minute(
    minutes: dict[int, list[int]], now: float, span: int = MINUTES
) -> list[tuple[int, int, int]]:
    """(minute start in epoch seconds, requests, failed) for the last `span` minutes."""
    current = int(now // 60)
    out = []
    for m in range(current - span + 1, current + 1):
        requests, failed = minutes.get(m, (0, 0))
        out.append((m * 60, requests, failed))
    return out
