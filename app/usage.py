"""Token usage per key x model x day, kept off the hot path.

A request adds to an in-memory tally (a dict update); a background task
flushes the tally every `flush_interval` seconds to the store - an embedded
SQLite file by default, Redis when shared - and once more at shutdown, so
usage survives a restart. Reports add what is not yet flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Protocol

log = logging.getLogger("aoai_gateway")

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")

Row = tuple[str, str, str]  # day, key name, model
Tally = dict[Row, dict[str, int]]
Report = dict[str, dict[str, dict[str, int]]]


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


class Store(Protocol):
    async def add(self, tally: Tally) -> None: ...
    async def read(self, since: str | None) -> Tally: ...
    async def close(self) -> None: ...


class SQLiteStore:
    """One small table; calls run in a worker thread so the loop never waits on disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        cols = ", ".join(f"{f} INTEGER NOT NULL DEFAULT 0" for f in FIELDS)
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS usage (day TEXT, key TEXT, model TEXT, {cols}, "
            "PRIMARY KEY (day, key, model))"
        )
        self._lock = asyncio.Lock()

    def _add(self, tally: Tally) -> None:
        names = ", ".join(FIELDS)
        marks = ", ".join("?" for _ in FIELDS)
        updates = ", ".join(f"{f} = {f} + excluded.{f}" for f in FIELDS)
        sql = (
            f"INSERT INTO usage (day, key, model, {names}) VALUES (?, ?, ?, {marks}) "
            f"ON CONFLICT (day, key, model) DO UPDATE SET {updates}"
        )
        rows = [(*row, *(counts.get(f, 0) for f in FIELDS)) for row, counts in tally.items()]
        with self._db:
            self._db.executemany(sql, rows)

    def _read(self, since: str | None) -> Tally:
        sql = f"SELECT day, key, model, {', '.join(FIELDS)} FROM usage"
        args: tuple[str, ...] = ()
        if since:
            sql += " WHERE day >= ?"
            args = (since,)
        return {
            (r[0], r[1], r[2]): dict(zip(FIELDS, r[3:], strict=True))
            for r in self._db.execute(sql, args)
        }

    async def add(self, tally: Tally) -> None:
        async with self._lock:
            await asyncio.to_thread(self._add, tally)

    async def read(self, since: str | None) -> Tally:
        async with self._lock:
            return await asyncio.to_thread(self._read, since)

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


class Usage:
    def __init__(self, store: Store, flush_interval: float = 2.0) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._pending: Tally = defaultdict(dict)
        self._task: asyncio.Task[None] | None = None

    def record(self, key: str, model: str, counts: dict[str, int]) -> None:
        tally = self._pending[(today(), key, model)]
        tally["requests"] = tally.get("requests", 0) + 1
        for name, n in counts.items():
            tally[name] = tally.get(name, 0) + n

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        tally, self._pending = self._pending, defaultdict(dict)
        try:
            await self.store.add(dict(tally))
        except Exception as exc:  # keep serving; try again next time
            log.error("usage store failed (%s); keeping %d rows in memory", exc, len(tally))
            for row, counts in tally.items():
                mine = self._pending[row]
                for name, n in counts.items():
                    mine[name] = mine.get(name, 0) + n

    async def report(self, since: str | None = None) -> Report:
        stored = await self.store.read(since)
        out: Report = {}
        for source in (stored, self._pending):
            for (day, key, model), counts in source.items():
                if since and day < since:
                    continue
                agg = out.setdefault(key, {}).setdefault(model, dict.fromkeys(FIELDS, 0))
                for name, n in counts.items():
                    agg[name] = agg.get(name, 0) + n
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self.store.close()
