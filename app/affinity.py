"""Where each stored response lives, and which gateway key it belongs to.

Azure keeps a stored response (and its encrypted reasoning) on the resource
that produced it; a follow-up sent anywhere else answers "not found". So when a
response passes through, the gateway remembers its `Owner`: resource,
deployment and the name of the gateway key that created it (issue 16: only that
key may read, continue, cancel or delete it).

Recording costs a request no round trip to a store: the owner goes into this
process's `OwnerCache` at once and to the store in the background
(write-behind). A lookup that misses the cache asks the store (another worker
or replica may have recorded the id), and asks once more a moment later if the
id is not there yet, because that other writer's write may still be in flight.

`SQLiteAffinity` keeps the map in the embedded SQLite file (the usage file by
default), so it survives a restart and is shared by `serve --workers N`;
`app.redis_state.RedisState` keeps it in Redis for replicas. Entries expire
after `state.responses_ttl_days` (30 by default, as long as Azure keeps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from app.errors import BadRequest, GatewayError, RateLimited, ResponseNotFound, ResponseUnavailable

if TYPE_CHECKING:
    from app.routing import Target

log = logging.getLogger("aoai_gateway")

PURGE_EVERY = 3600.0  # seconds between two deletions of expired owners
CACHE_SIZE = 100_000  # owners kept in memory per process (about 20 MB at most)
RECHECK = 0.05  # seconds before a miss is looked up once more
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Owner:
    resource: str
    deployment: str
    key: str  # the gateway key's name (never its value)

    def encode(self) -> bytes:
        return orjson.dumps([self.resource, self.deployment, self.key])

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Owner | None:
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
            return cls(value[0], value[1], value[2])
        return None


def id_hash(response_id: str) -> str:
    """A response id as the access log shows it: enough to correlate, not to use."""
    return hashlib.sha256(response_id.encode()).hexdigest()[:16]


# --- routing a request that names a stored response (pure decisions) ---------------------


def not_found(response_id: str) -> ResponseNotFound:
    """What an unknown id and another key's id both get: the same 404."""
    return ResponseNotFound(f"Response with id '{response_id}' not found.", param="response_id")


def on_resource(
    targets: tuple[Target, ...], owner: Owner, response_id: str, model: str
) -> tuple[Target, ...]:
    """The model's deployments on the owner's resource, the one that wrote it first."""
    here = [t for t in targets if t.resource == owner.resource]
    if not here:
        raise BadRequest(
            f"Response '{response_id}' is stored on resource '{owner.resource}', where this "
            f"gateway has no deployment of model '{model}'; continue it with a model served there.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    here.sort(key=lambda t: t.deployment != owner.deployment)
    return tuple(here)


def unavailable(
    response_id: str,
    target: Target,
    exc: GatewayError,
    cooling_until: Callable[[str], float],
    now: float,
) -> ResponseUnavailable:
    """The owner's resource cannot serve: say so, and when it may again; no other region."""
    wait: float | None = None
    if isinstance(exc, RateLimited):
        wait = exc.retry_after
    elif cooling_until(target.id) > now:
        wait = cooling_until(target.id) - now
    return ResponseUnavailable(
        f"Response '{response_id}' is stored on resource '{target.resource}', which cannot "
        f"serve it now ({exc.message}). It is not sent to another resource, which would not "
        "have it" + ("; retry after the time in the retry-after header." if wait else "."),
        wait,
    )


class OwnerCache:
    """This process's owners, oldest dropped first beyond `size`."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: dict[str, tuple[Owner, float]] = {}

    def get(self, response_id: str, now: float) -> Owner | None:
        found = self._entries.get(response_id)
        if found is None:
            return None
        if found[1] <= now:
            del self._entries[response_id]
            return None
        return found[0]

    def put(self, response_id: str, owner: Owner, until: float) -> None:
        entries = self._entries
        entries.pop(response_id, None)
        entries[response_id] = (owner, until)
        while len(entries) > self.size:
            del entries[next(iter(entries))]


class SQLiteAffinity:
    """The owners in one SQLite table, written behind the requests that learn them."""

    def __init__(self, path: str, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self.cache = OwnerCache()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses "
            "(id TEXT PRIMARY KEY, owner BLOB NOT NULL, expires REAL NOT NULL)"
        )
        self._pending: list[tuple[str, bytes, float]] = []
        self._flush: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._failing = False
        self._closed = False
        self._purged = 0.0

    def remember(self, response_id: str, owner: Owner, now: float) -> None:
        until = now + self.ttl
        self.cache.put(response_id, owner, until)
        self._pending.append((response_id, owner.encode(), until))
        if self._flush is None:
            with contextlib.suppress(RuntimeError):  # no loop: flushed at close
                self._flush = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        async with self._lock:
            rows, self._pending = self._pending, []
            self._flush = None  # what is remembered from now on gets a task of its own
            if not rows or self._closed:
                return
            try:
                now = time.time()
                if now - self._purged > PURGE_EVERY:  # a long-running process: drop expired
                    self._purged = now
                    await asyncio.to_thread(self._purge, now)
                await asyncio.to_thread(self._insert, rows)
            except sqlite3.Error as exc:
                if not self._failing:
                    log.error("affinity: cannot write %s (%s); keeping owners", self.path, exc)
                self._failing = True
                self._pending[:0] = rows
            else:
                self._failing = False

    def _insert(self, rows: list[tuple[str, bytes, float]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO responses (id, owner, expires) VALUES (?, ?, ?)", rows
            )

    def _select(self, response_id: str, now: float) -> tuple[bytes, float] | None:
        row = self._db.execute(
            "SELECT owner, expires FROM responses WHERE id = ? AND expires > ?",
            (response_id, now),
        ).fetchone()
        return (bytes(row[0]), float(row[1])) if row else None

    async def owner(self, response_id: str, now: float) -> Owner | None:
        found = self.cache.get(response_id, now)
        if found is not None:
            return found
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(RECHECK)
            try:
                async with self._lock:  # one thread at a time on the connection
                    if self._closed:
                        return None
                    row = await asyncio.to_thread(self._select, response_id, now)
            except sqlite3.Error as exc:
                log.error("affinity: cannot read %s (%s)", self.path, exc)
                return None
            if row is not None:
                owner = Owner.decode(row[0])
                if owner is not None:
                    self.cache.put(response_id, owner, row[1])
                return owner
        return None

    async def start(self) -> None:
        now = time.time()
        with contextlib.suppress(sqlite3.Error):
            async with self._lock:
                self._purged = now
                await asyncio.to_thread(self._purge, now)

    def _purge(self, now: float) -> None:
        with self._db:
            self._db.execute("DELETE FROM responses WHERE expires <= ?", (now,))

    async def close(self) -> None:
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)
        if self._pending:
            await self._write()
        async with self._lock:
            self._closed = True
            self._db.close()
