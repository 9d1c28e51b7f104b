"""Responses stored on one resource, as Azure keeps them (unless ``store: false``).

Each simulator process is one resource, so a response id is known only where it was
created: a follow-up sent to another resource finds nothing, as on Azure. A background
response also keeps its event log, so a client can resume its stream by sequence number
while it is still being written.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

MAX_STORED: Final = 10_000
TERMINAL: Final = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass(eq=False)
class StoredResponse:
    """One stored response: its current body, its input items, and (background) its events."""

    body: dict[str, Any]
    deployment: str
    input_items: list[dict[str, Any]]
    background: bool = False
    events: list[bytes] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> str:
        """The response's ``status``."""
        return str(self.body.get("status"))

    @property
    def finished(self) -> bool:
        """Whether the response reached a terminal status (no more events will come)."""
        return self.status in TERMINAL

    def add_event(self, frame: bytes) -> None:
        """Append one rendered SSE event and wake readers."""
        self.events.append(frame)
        self.notify()

    def notify(self) -> None:
        """Wake every reader waiting in ``changed``."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Wait for the next event or status change."""
        await self._changed.wait()


class ResponseStore:
    """Response id -> StoredResponse, oldest dropped past ``MAX_STORED``."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None."""
        return self._items.get(response_id)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Store (or replace) a response."""
        self._items[response_id] = stored
        while len(self._items) > MAX_STORED:
            _, old = self._items.popitem(last=False)
            _stop(old)

    def delete(self, response_id: str) -> bool:
        """Forget a response; False if it was not stored."""
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        _stop(stored)
        return True

    def clear(self) -> None:
        """Forget every response, stopping background work."""
        for stored in self._items.values():
            _stop(stored)
        self._items.clear()


def _stop(stored: StoredResponse) -> None:
    if stored.task is not None and not stored.task.done():
        stored.task.cancel()
