"""Noticing that a client hung up, so its upstream request is cancelled at once.

Listening needs a task reading `receive()`. Most requests finish within a few
milliseconds, so a request gets that task only once it has run `AFTER`
seconds. Requests waiting for that moment sit in an insertion-ordered dict
that one periodic sweep walks from the front: per request that is a dict
insert and a pop, where a loop timer per request (uvloop's call_later)
measured several percent of the gateway's CPU. A disconnect is noticed at
most `AFTER` plus one sweep after it happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

AFTER = 0.02  # seconds a request runs before it listens for a disconnect

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class Ending(Protocol):
    @property
    def ended(self) -> bool:
        """The response's last byte was sent (uvicorn then reports a disconnect)."""
        ...


class Watch:
    """One request: cancels `task` when its client disconnects."""

    __slots__ = ("gone", "rec", "receive", "task", "watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any], rec: Ending) -> None:
        self.receive = receive
        self.task = task
        self.rec = rec
        self.gone = False
        self.watcher: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.watcher = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if self.rec.ended:
                    return  # uvicorn says so once the response is complete
                self.gone = True
                self.task.cancel()
                return

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()


class Watches:
    """Starts each armed watch once its request has run `after` seconds."""

    def __init__(self, after: float = AFTER) -> None:
        self.after = after
        self._due: dict[Watch, float] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def arm(self, watch: Watch) -> None:
        loop = asyncio.get_running_loop()
        self._due[watch] = loop.time() + self.after
        if self._sweep is None:
            self._sweep = loop.call_later(self.after, self._start_due, loop)

    def disarm(self, watch: Watch) -> None:
        self._due.pop(watch, None)
        watch.stop()

    def _start_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        now = loop.time()
        due = self._due
        while due:
            watch = next(iter(due))
            if due[watch] > now:  # armed in time order: the rest are later still
                break
            del due[watch]
            watch.start(loop)
        if due:
            self._sweep = loop.call_later(self.after, self._start_due, loop)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._due.clear()
