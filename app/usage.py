"""Token usage per key x model x day, kept off the hot path.

A request adds to an in-memory tally (a dict update); a background task
flushes the tally every `flush_interval` seconds to the store - an embedded
SQLite file by default (`SQLiteStore`), Redis when `state.redis_url` is set
(`RedisStore`, shared by every replica) - and once more at shutdown, so usage
survives a restart. Reports add what this process has not flushed yet; other
replicas' counts appear once they flush (within `flush_interval`).

If the store fails, the tally stays in memory and the next flush tries again;
the failure is logged once, and so is the recovery.

Each flush is a batch numbered per writer (`Batch`: a random id per process and
a sequence number), and a store applies a batch at most once: a batch whose
outcome is unknown (a Redis timeout, a cancelled write) is sent again with the
same number before anything newer, and the store skips one it has already
applied (issue 10: a batch re-applied after a Redis stall double-counted
usage). Until such a batch is confirmed, a report may count it twice; the
stored totals never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("aoai_gateway")

FIELDS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    # what images and audio count where tokens do not fit (app.media_usage)
    "images",
    "audio_seconds",
    "characters",
)
# What a row also stores: cost in nano-dollars (app.pricing), and the requests no price applied to.
COST = "cost_nusd"
UNPRICED = "unpriced_requests"
# Requests whose tokens are the gateway's estimate: Azure's usage never arrived (a
# stream the client abandoned, or one that broke): see app.estimate.
ESTIMATED = "estimated_requests"
COLUMNS = (*FIELDS, COST, UNPRICED, ESTIMATED)

Row = tuple[str, str, str]  # day, key name, model
Tally = dict[Row, dict[str, int]]
Report = dict[str, dict[str, dict[str, int]]]


def today() -> str:
    """The UTC date as YYYY-MM-DD; formatted once per day (it is on the hot path)."""
    return _day_name(int(time.time() // 86400))


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    return dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


class Batch:
    """Which flush a tally is: `seq` counts up per `writer` (one per process)."""

    __slots__ = ("seq", "writer")

    def __init__(self, writer: str, seq: int) -> None:
        self.writer = writer
        self.seq = seq


class StoreUnavailable(Exception):
    """The usage store did not answer; the message names it, never a secret."""


class Store(Protocol):
    async def add(self, tally: Tally, batch: Batch) -> None:
        """Apply `tally` unless this batch (or a later one of its writer) already was."""
        ...

    async def read(self, since: str | None) -> Tally: ...
    async def spend(self, since: str) -> dict[tuple[str, str], int]:
        """Nano-dollars per (day, key) from `since` on: what budgets are checked against."""
        ...

    async def close(self) -> None: ...


class SQLiteStore:
    """One small table; calls run in a worker thread so the loop never waits on disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        cols = ", ".join(f"{f} INTEGER NOT NULL DEFAULT 0" for f in COLUMNS)
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS usage (day TEXT, key TEXT, model TEXT, {cols}, "
            "PRIMARY KEY (day, key, model))"
        )
        have = {row[1] for row in self._db.execute("PRAGMA table_info(usage)")}
        for column in COLUMNS:  # a file written before a column existed
            if column not in have:
                self._db.execute(f"ALTER TABLE usage ADD {column} INTEGER NOT NULL DEFAULT 0")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS usage_batches (writer TEXT PRIMARY KEY, seq INTEGER)"
        )
        self._lock = asyncio.Lock()

    def _add(self, tally: Tally, batch: Batch) -> None:
        names = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        updates = ", ".join(f"{f} = {f} + excluded.{f}" for f in COLUMNS)
        sql = (
            f"INSERT INTO usage (day, key, model, {names}) VALUES (?, ?, ?, {marks}) "
            f"ON CONFLICT (day, key, model) DO UPDATE SET {updates}"
        )
        rows = [(*row, *(counts.get(f, 0) for f in COLUMNS)) for row, counts in tally.items()]
        with self._db:  # one transaction: the rows and the batch's mark land together
            done = self._db.execute(
                "SELECT seq FROM usage_batches WHERE writer = ?", (batch.writer,)
            ).fetchone()
            if done is not None and done[0] >= batch.seq:
                return
            self._db.executemany(sql, rows)
            self._db.execute(
                "INSERT INTO usage_batches (writer, seq) VALUES (?, ?) "
                "ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq",
                (batch.writer, batch.seq),
            )

    def _read(self, since: str | None) -> Tally:
        sql = f"SELECT day, key, model, {', '.join(COLUMNS)} FROM usage"
        args: tuple[str, ...] = ()
        if since:
            sql += " WHERE day >= ?"
            args = (since,)
        return {
            (r[0], r[1], r[2]): dict(zip(COLUMNS, r[3:], strict=True))
            for r in self._db.execute(sql, args)
        }

    def _spend(self, since: str) -> dict[tuple[str, str], int]:
        sql = f"SELECT day, key, SUM({COST}) FROM usage WHERE day >= ? GROUP BY day, key"
        return {(r[0], r[1]): int(r[2]) for r in self._db.execute(sql, (since,))}

    async def spend(self, since: str) -> dict[tuple[str, str], int]:
        async with self._lock:
            return await asyncio.to_thread(self._spend, since)

    async def add(self, tally: Tally, batch: Batch) -> None:
        async with self._lock:
            await asyncio.to_thread(self._add, tally, batch)

    async def read(self, since: str | None) -> Tally:
        async with self._lock:
            return await asyncio.to_thread(self._read, since)

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


class RedisStore:
    """Usage shared by every replica: one hash per day, one field per key x model x counter.

        {prefix}usage:days        set   the days that have usage
        {prefix}usage:{day}       hash  ["alice","gpt-4o","prompt_tokens"] -> n
        {prefix}spend:{day}       hash  "alice" -> nano-dollars (what budgets read)
        {prefix}usage:applied     hash  writer -> the last batch applied

    A flush is one script (`_APPLY`): it lands whole or not at all, and a batch
    already applied is skipped, so a retry after a timeout never counts twice.
    Durability across a Redis restart is Redis's own (RDB/AOF).
    """

    def __init__(self, redis_url: str, prefix: str = "aoai-gateway:", timeout: float = 2.0):
        from app.redis_state import connect, describe

        self.redis: Redis = connect(redis_url, timeout)
        self.where = describe(self.redis)
        self._days = prefix + "usage:days"
        self._day = prefix + "usage:"
        self._spend = prefix + "spend:"
        self._applied = prefix + "usage:applied"
        self._apply = self.redis.register_script(_APPLY)

    async def add(self, tally: Tally, batch: Batch) -> None:
        days = sorted({day for day, _, _ in tally})
        keys = [self._applied, self._days]
        where: dict[str, int] = {}  # a hash's name -> its 1-based place in KEYS
        increments: list[str | int] = []
        for (day, key, model), counts in tally.items():
            for hash_name, field, n in (
                *(
                    (self._day + day, orjson.dumps([key, model, name]).decode(), n)
                    for name, n in counts.items()
                ),
                (self._spend + day, key, counts.get(COST, 0)),
            ):
                if n:
                    if hash_name not in where:
                        keys.append(hash_name)
                        where[hash_name] = len(keys)
                    increments += [where[hash_name], field, n]
        args = [batch.writer, batch.seq, _APPLIED_TTL_MS, len(days), *days, *increments]
        try:
            await self._apply(keys=keys, args=args)
        except Exception as exc:
            raise StoreUnavailable(f"redis at {self.where}: {exc}") from None

    async def read(self, since: str | None) -> Tally:
        try:
            members = await self.redis.smembers(self._days)
        except Exception as exc:
            raise StoreUnavailable(f"redis at {self.where}: {exc}") from None
        days = sorted(d.decode() if isinstance(d, bytes) else d for d in members)
        days = [d for d in days if not since or d >= since]
        out: Tally = {}
        for day, fields in zip(days, await self._hashes(self._day, days), strict=True):
            for field, n in fields.items():
                key, model, name = orjson.loads(field)
                out.setdefault((day, key, model), {})[name] = int(n)
        return out

    async def spend(self, since: str) -> dict[tuple[str, str], int]:
        days = days_from(since, today())
        out: dict[tuple[str, str], int] = {}
        for day, fields in zip(days, await self._hashes(self._spend, days), strict=True):
            for key, n in fields.items():
                out[(day, key.decode() if isinstance(key, bytes) else key)] = int(n)
        return out

    async def _hashes(self, prefix: str, days: list[str]) -> list[dict[Any, Any]]:
        """HGETALL of one hash per day, in one round trip."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(prefix + day)
            return list(await pipe.execute())
        except Exception as exc:
            raise StoreUnavailable(f"redis at {self.where}: {exc}") from None

    async def close(self) -> None:
        await self.redis.aclose()


# KEYS: the applied hash, the days set, then the hashes incremented; ARGV: writer,
# seq, the applied hash's ttl (ms), the number of days, the days, then triples
# (place of a hash in KEYS, field, n). Skips a batch its writer already applied.
_APPLY = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local seq = tonumber(ARGV[2])
if seq <= last then return 0 end
local ndays = tonumber(ARGV[4])
for i = 1, ndays do redis.call('SADD', KEYS[2], ARGV[4 + i]) end
local i = 5 + ndays
while i <= #ARGV do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_APPLIED_TTL_MS = 30 * 86400 * 1000  # writers gone for a month are forgotten


class Usage:
    def __init__(self, store: Store, flush_interval: float = 2.0) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._pending: Tally = defaultdict(dict)
        self._flushing: Tally = {}  # handed to the store, not yet confirmed
        self._writer = os.urandom(8).hex()
        self._seq = 0  # the batch in _flushing, or the last one confirmed
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        key: str,
        model: str,
        counts: dict[str, int],
        cost: int | None,
        estimated: bool = False,
    ) -> None:
        """One answer's token counts and its cost in nano-dollars (None: unpriced);
        `estimated`: the counts are the gateway's estimate, not Azure's."""
        tally = self._pending[(today(), key, model)]
        tally["requests"] = tally.get("requests", 0) + 1
        for name, n in counts.items():
            tally[name] = tally.get(name, 0) + n
        if cost is None:
            tally[UNPRICED] = tally.get(UNPRICED, 0) + 1
        else:
            tally[COST] = tally.get(COST, 0) + cost
        if estimated:
            tally[ESTIMATED] = tally.get(ESTIMATED, 0) + 1

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> bool:
        """Hand the tally to the store; on failure keep it for the next flush.

        A batch not confirmed is sent again first, unchanged and with its own
        number, so the store can tell a retry from new counts."""
        if self._flushing and not await self._send():
            return False
        if not self._pending:
            return True
        self._flushing, self._pending = dict(self._pending), defaultdict(dict)
        self._seq += 1
        return await self._send()

    async def _send(self) -> bool:
        try:
            await self.store.add(self._flushing, Batch(self._writer, self._seq))
        except Exception as exc:  # keep serving; try again next time
            if not self._failing:
                log.error("usage: store failed (%s); keeping the counts in memory", exc)
            self._failing = True
            return False
        self._flushing = {}
        if self._failing:
            log.warning("usage: store answers again; pending counts written")
            self._failing = False
        return True

    async def rows(self, since: str | None = None) -> Tally:
        """Per day, key and model, with what this process has not written yet;
        raises `StoreUnavailable` if the store cannot be read."""
        stored = await self.store.read(since)
        out: Tally = {}
        for source in (stored, self._flushing, self._pending):
            for row, counts in source.items():
                if since and row[0] < since:
                    continue
                agg = out.setdefault(row, dict.fromkeys(COLUMNS, 0))
                for name, n in counts.items():
                    agg[name] = agg.get(name, 0) + n
        return out

    async def report(self, since: str | None = None) -> Report:
        """Per key and model (over the days from `since` on)."""
        return by_key_model(await self.rows(since))

    async def spend(self, since: str) -> dict[tuple[str, str], int]:
        """Nano-dollars per (day, key) from `since` on, unwritten counts included."""
        out = await self.store.spend(since)
        for source in (self._flushing, self._pending):
            for (day, key, _), counts in source.items():
                if day >= since and counts.get(COST):
                    out[(day, key)] = out.get((day, key), 0) + counts[COST]
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not await self.flush():
            rows = len(self._pending) + len(self._flushing)
            log.error("usage: %d rows could not be written at shutdown and are lost", rows)
        await self.store.close()


def by_key_model(rows: Tally) -> Report:
    out: Report = {}
    for (_, key, model), counts in rows.items():
        agg = out.setdefault(key, {}).setdefault(model, dict.fromkeys(COLUMNS, 0))
        for name, n in counts.items():
            agg[name] = agg.get(name, 0) + n
    return out


def days_from(since: str, until: str) -> list[str]:
    """Every UTC day from `since` to `until`, both included, as YYYY-MM-DD."""
    first, last = dt.date.fromisoformat(since), dt.date.fromisoformat(until)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
