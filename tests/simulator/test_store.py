"""Responses stored on one simulated resource (app/simulator/store.py)."""

from __future__ import annotations

import asyncio

import pytest

from app.simulator import store
from app.simulator.responses_wire import api_version_too_old
from app.simulator.store import ResponseStore, StoredResponse


def stored(status: str = "completed") -> StoredResponse:
    return StoredResponse({"status": status}, "gpt-4o", [])


def test_oldest_dropped_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MAX_STORED", 2)
    responses = ResponseStore()
    for rid in ("a", "b", "c"):
        responses.put(rid, stored())
    assert len(responses) == 2
    assert responses.get("a") is None and responses.get("c") is not None
    assert responses.delete("b") is True and responses.delete("b") is False


@pytest.mark.anyio
async def test_clear_and_delete_stop_background_work() -> None:
    responses = ResponseStore()
    running = [stored("in_progress"), stored("in_progress")]
    for i, s in enumerate(running):
        s.task = asyncio.create_task(asyncio.sleep(30))
        responses.put(str(i), s)
    responses.delete("0")
    responses.clear()
    await asyncio.sleep(0)
    assert all(s.task is not None and s.task.cancelled() for s in running)
    assert len(responses) == 0


@pytest.mark.anyio
async def test_readers_wake_on_each_event() -> None:
    s = stored("in_progress")
    waiter = asyncio.create_task(s.changed())
    await asyncio.sleep(0)
    assert not waiter.done()
    s.add_event(b"event: x\n\n")
    await asyncio.wait_for(waiter, 1)
    assert s.events == [b"event: x\n\n"] and not s.finished
    s.body = {"status": "cancelled"}
    assert s.finished


@pytest.mark.parametrize(
    ("version", "old"),
    [
        (b"2024-10-21", True),
        (b"2025-01-01-preview", True),
        (b"2025-03-01-preview", False),
        (b"2025-04-01-preview", False),
        (b"preview", False),
        (b"latest", False),
    ],
)
def test_api_version_floor(version: bytes, old: bool) -> None:
    assert api_version_too_old(version) is old
