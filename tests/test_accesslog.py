"""app/accesslog.py: batched lines, the time formatted at flush, JSON and text."""

from __future__ import annotations

import asyncio
import io
import json
import re

from app.accesslog import AccessLog, rfc3339

ENTRY = {"request_id": "r1", "method": "GET", "path": "/v1/models", "key": "alice", "status": 200}


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250Z"
    assert rfc3339(1_800_000_000.999) == "2027-01-15T08:00:00.999Z"


def test_lines_wait_for_the_batch_inside_a_loop() -> None:
    out = io.BytesIO()

    async def run() -> None:
        log = AccessLog(out, interval=0.05)  # type: ignore[arg-type]
        log.write(dict(ENTRY))
        log.write({**ENTRY, "request_id": "r2", "model": None})
        assert out.getvalue() == b""  # batched
        await asyncio.sleep(0.1)

    asyncio.run(run())
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [e["request_id"] for e in lines] == ["r1", "r2"]
    assert all(next(iter(e)) == "time" and e["time"].endswith("Z") for e in lines)


def test_batches_are_written_at_flush_in_both_formats() -> None:
    for fmt in ("json", "text"):
        out = io.BytesIO()
        log = AccessLog(out, fmt=fmt)  # type: ignore[arg-type]
        log._entries.append((1_800_000_000.5, dict(ENTRY)))
        log._entries.append((1_800_000_001.0, {**ENTRY, "status": 404, "tokens": None}))
        log.flush()
        first, second = out.getvalue().decode().splitlines()
        if fmt == "json":
            assert json.loads(first) == {"time": "2027-01-15T08:00:00.500Z", **ENTRY}
            assert next(iter(json.loads(second))) == "time"
        else:
            assert first == "2027-01-15T08:00:00.500Z 200 GET /v1/models key=alice id=r1"
            assert re.match(
                r"2027-01-15T08:00:01\.000Z 404 GET /v1/models key=alice id=r1$", second
            )
