"""`RedisState`: limits, cooldowns and rejected keys shared by every replica.

Layout (every key under `prefix`, default ``aoai-gateway:``):

    {prefix}cooling        hash  target id -> until (epoch seconds)
    {prefix}rejected       hash  key id    -> until
    {prefix}rpm:{name}     zset  one member per admitted request, scored by its time
    {prefix}tpm:{name}     hash  epoch second -> tokens counted in that second
    {prefix}response:{id}  string  a stored response's owner (resource, deployment,
                           gateway key name) as JSON, expiring after the TTL

The hot path reads cooldowns and rejected keys synchronously, so they are
served from a local `MemoryState` mirror: a write lands in the mirror at once
and goes to Redis in a background task (an atomic max-merge script); a
refresher task reads both hashes every `refresh` seconds. A cooldown set by
one replica is therefore seen by the others within `refresh` plus one round
trip (under a second with the defaults).

`admit()` is the one call that waits on Redis: one script that trims the
window, checks rpm and tpm, counts the request and reserves its estimated
tokens, atomically, bounded by `timeout`. `settle()` turns the reservation into
the tokens used (`_SETTLE`), in the bucket it was made in. Every admitted
request and every token count is also kept in the mirror, so when Redis is
unreachable the gateway carries on with this replica's own windows
(MemoryState semantics): it logs the outage once, sets
`aoai_gateway_state_backend_up{backend="redis"}` to 0, sends nothing more to
Redis until a background ping succeeds, then pushes the cooldowns it learnt
meanwhile and logs the recovery. No request ever waits on a dead Redis for
longer than `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.affinity import RECHECK, Owner
from app.config import ConfigError
from app.metrics import Metrics
from app.state import WINDOW, MemoryState

log = logging.getLogger("aoai_gateway")

DEFAULT_PREFIX = "aoai-gateway:"
TIMEOUT = 0.25  # seconds: the longest any request waits on Redis
REFRESH = 0.5  # seconds between two reads of the shared cooldowns

# Failures that mean "Redis is not answering" (the client maps socket errors
# to ConnectionError/TimeoutError, both RedisError; the rest is belt and braces).
UNREACHABLE = (RedisError, OSError, asyncio.TimeoutError)

# KEYS[1] hash; ARGV: field, until, now. Keeps the later of the two times
# (replicas never shorten each other's cooldowns), drops expired fields and
# lets the hash expire with its last entry.
_MERGE = """
local u = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if u > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local now = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local latest = 0
for i = 1, #all, 2 do
  local v = tonumber(all[i + 1])
  if v <= now then redis.call('HDEL', KEYS[1], all[i])
  elseif v > latest then latest = v end
end
if latest > 0 then redis.call('PEXPIREAT', KEYS[1], math.ceil(latest * 1000) + 1000) end
return 0
"""

# KEYS[1] request zset, KEYS[2] token buckets; ARGV: now, rpm or '', tpm or '',
# member, window, tokens to reserve. Returns nil when admitted (counted, and the
# tokens reserved in the bucket of second floor(now)), else the seconds to wait
# as a string (a Lua number would be truncated to an integer).
_ADMIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[5])
local start = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start)
local rpm = tonumber(ARGV[2])
if rpm and redis.call('ZCARD', KEYS[1]) >= rpm then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(first[2]) + window - now)
end
local tpm = tonumber(ARGV[3])
if tpm then
  local buckets = redis.call('HGETALL', KEYS[2])
  local total = 0
  local oldest = nil
  for i = 1, #buckets, 2 do
    local sec = tonumber(buckets[i])
    if sec + 1 <= start then redis.call('HDEL', KEYS[2], buckets[i])
    else
      total = total + tonumber(buckets[i + 1])
      if oldest == nil or sec < oldest then oldest = sec end
    end
  end
  if total >= tpm then return tostring(oldest + 1 + window - now) end
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
local reserve = tonumber(ARGV[6])
if reserve and reserve > 0 then
  redis.call('HINCRBY', KEYS[2], tostring(math.floor(now)), reserve)
  redis.call('PEXPIRE', KEYS[2], math.ceil(window * 1000) + 2000)
end
return false
"""

# KEYS[1] token buckets; ARGV: the reservation's bucket ('' if none), used minus
# reserved, the current bucket, used, ttl (ms). A reservation still in its
# bucket becomes `used` there; one already trimmed away counts `used` now.
_SETTLE = """
if ARGV[1] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
elseif tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 0
"""

_TTL_MS = int(WINDOW * 1000) + 2000  # token buckets outlive the window a little
# A cooldown or rejection that extends a known one by less than this is not
# sent again: a burst of 429s makes one write, not one per request.
_NEWS = 1.0


def connect(redis_url: str, timeout: float) -> Redis:
    """An asyncio client that fails fast: short socket timeouts, no retries."""
    try:
        return Redis.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
    except ValueError as exc:
        raise ConfigError([f"state.redis_url: {exc}"]) from None


def describe(client: Redis) -> str:
    """host:port/db of a client, never its password."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


class RedisState:
    backend = "redis"

    def __init__(
        self,
        redis_url: str,
        metrics: Metrics,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = TIMEOUT,
        refresh: float = REFRESH,
        ttl: float = 30 * 86400.0,
    ) -> None:
        self.local = MemoryState(ttl=ttl)
        self.ttl = ttl
        self._response = prefix + "response:"
        self.timeout = timeout
        self.refresh = refresh
        self.redis = connect(redis_url, timeout)
        self.where = describe(self.redis)
        self._gauge = metrics.backend_up.labels(self.backend)
        self._cooling_key = prefix + "cooling"
        self._rejected_key = prefix + "rejected"
        self._rpm = prefix + "rpm:"
        self._tpm = prefix + "tpm:"
        self._merge = self.redis.register_script(_MERGE)
        self._admit = self.redis.register_script(_ADMIT)
        self._settle = self.redis.register_script(_SETTLE)
        # reservations made in Redis, by (name, admitted at): settled there
        self._reserved: Counter[tuple[str, float]] = Counter()
        self._ids = itertools.count()
        self._me = os.urandom(4).hex()
        self._up: bool | None = None  # None until the first answer or failure
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up is True

    # health ------------------------------------------------------------------
    def _mark_down(self, exc: BaseException) -> None:
        if self._up is not False:
            log.error(
                "state: redis at %s unreachable (%s); serving with this replica's local "
                "limits and cooldowns until it is back",
                self.where,
                type(exc).__name__ if not str(exc) else exc,
            )
        self._up = False
        self._gauge.set(0)

    def _mark_up(self) -> None:
        if self._up is False:
            log.warning(
                "state: redis at %s is back; sharing state across replicas again", self.where
            )
        self._up = True
        self._gauge.set(1)

    # deployments and keys: mirror now, Redis in the background ---------------
    def cooling_until(self, target_id: str) -> float:
        return self.local.cooling_until(target_id)

    def cool(self, target_id: str, until: float) -> None:
        known = self.local.cooling_until(target_id)
        if until > known:
            self.local.cool(target_id, until)
        if until > known + _NEWS:
            self._push(self._cooling_key, target_id, until)

    def cooling(self, now: float) -> dict[str, float]:
        return self.local.cooling(now)

    def key_rejected(self, key_id: str, now: float) -> bool:
        return self.local.key_rejected(key_id, now)

    def reject_key(self, key_id: str, until: float) -> None:
        known = self.local.rejected_until(key_id)
        if until > known:
            self.local.reject_key(key_id, until)
        if until > known + _NEWS:
            self._push(self._rejected_key, key_id, until)

    def rejected_keys(self, now: float) -> dict[str, float]:
        return self.local.rejected_keys(now)

    def _push(self, hash_key: str, field: str, until: float) -> None:
        if self._up is False:
            return  # pushed again by _recover() once Redis answers
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(loop, self._write(hash_key, field, until))

    def _spawn(self, loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, hash_key: str, field: str, until: float) -> None:
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self._merge(keys=[hash_key], args=[field, repr(until), repr(time.time())])
        except UNREACHABLE as exc:
            self._mark_down(exc)

    # limits ------------------------------------------------------------------
    async def admit(
        self, name: str, rpm: int | None, tpm: int | None, now: float, reserve: int = 0
    ) -> float | None:
        if self._up is not False:
            member = f"{now!r}:{self._me}:{next(self._ids)}"
            args = [repr(now), rpm or "", tpm or "", member, repr(WINDOW), max(reserve, 0)]
            try:
                async with asyncio.timeout(self.timeout * 2):
                    wait = await self._admit(keys=[self._rpm + name, self._tpm + name], args=args)
            except UNREACHABLE as exc:
                self._mark_down(exc)
            else:
                if wait is not None:
                    return float(wait)
                if reserve > 0:
                    self._reserved[(name, now)] += 1
                # keep the local window warm
                self.local.admit_now(name, None, None, now, reserve)
                return None
        return self.local.admit_now(name, rpm, tpm, now, reserve)

    async def settle(self, name: str, at: float, reserved: int, used: int, now: float) -> None:
        self.local.settle_now(name, at, reserved, used, now)
        where = (name, at)
        remote = reserved > 0 and self._reserved[where] > 0
        if remote:
            self._reserved[where] -= 1
            if not self._reserved[where]:
                del self._reserved[where]
        if self._up is False or (not remote and used <= 0):
            return  # a reservation made locally stays local; Redis learns nothing new
        bucket = str(int(at)) if remote else ""
        args: list[str | int] = [bucket, used - reserved, str(int(now)), max(used, 0), _TTL_MS]
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self._settle(keys=[self._tpm + name], args=args)
        except UNREACHABLE as exc:
            self._mark_down(exc)

    async def add_tokens(self, name: str, tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        self.local.add_tokens_now(name, tokens, now)
        if self._up is False:
            return
        key = self._tpm + name
        try:
            async with asyncio.timeout(self.timeout * 2):
                pipe = self.redis.pipeline(transaction=False)
                pipe.hincrby(key, str(int(now)), tokens)
                pipe.pexpire(key, _TTL_MS)
                await pipe.execute()
        except UNREACHABLE as exc:
            self._mark_down(exc)

    # stored responses: the owner is cached here at once, written behind ------
    def remember(self, response_id: str, owner: Owner, now: float) -> None:
        self.local.remember(response_id, owner, now)
        if self._up is False:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(loop, self._write_owner(response_id, owner))

    async def _write_owner(self, response_id: str, owner: Owner) -> None:
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self.redis.set(
                    self._response + response_id, owner.encode(), px=int(self.ttl * 1000)
                )
        except UNREACHABLE as exc:
            self._mark_down(exc)

    async def owner(self, response_id: str, now: float) -> Owner | None:
        found = await self.local.owner(response_id, now)
        if found is not None or self._up is False:
            return found
        for attempt in range(2):  # a second look: another replica's write may be in flight
            if attempt:
                await asyncio.sleep(RECHECK)
            try:
                async with asyncio.timeout(self.timeout * 2):
                    raw = await self.redis.get(self._response + response_id)
            except UNREACHABLE as exc:
                self._mark_down(exc)
                return None
            owner = Owner.decode(raw)
            if owner is not None:
                self.local.owners.put(response_id, owner, now + self.ttl)
                return owner
        return None

    # background --------------------------------------------------------------
    async def pull(self) -> None:
        """Merge the shared cooldowns and rejected keys into the mirror."""
        async with asyncio.timeout(self.timeout * 2):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self._cooling_key)
            pipe.hgetall(self._rejected_key)
            cooling, rejected = await pipe.execute()
        for target_id, until in _times(cooling):
            self.local.cool(target_id, until)
        for key_id, until in _times(rejected):
            if until > self.local.rejected_until(key_id):
                self.local.reject_key(key_id, until)

    async def _recover(self) -> None:
        """Redis answers again: share what this replica learnt meanwhile."""
        now = time.time()
        for hash_key, entries in (
            (self._cooling_key, self.local.cooling(now)),
            (self._rejected_key, self.local.rejected_keys(now)),
        ):
            for field, until in entries.items():
                async with asyncio.timeout(self.timeout * 2):
                    await self._merge(keys=[hash_key], args=[field, repr(until), repr(now)])

    async def sync(self) -> None:
        """One round of the background loop: refresh the mirror, or probe a dead Redis."""
        try:
            if self._up is not True:
                async with asyncio.timeout(self.timeout * 2):
                    await self.redis.ping()
                if self._up is False:
                    await self._recover()
            await self.pull()
        except UNREACHABLE as exc:
            self._mark_down(exc)
        else:
            self._mark_up()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self.sync()
            except Exception as exc:  # never let the refresher die; report like an outage
                self._mark_down(exc)

    async def start(self) -> None:
        await self.sync()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()


def _times(entries: dict[bytes, bytes]) -> Iterator[tuple[str, float]]:
    """(field, until) of a hash read from Redis, skipping what is not a number."""
    for field, value in entries.items():
        try:
            yield field.decode(), float(value)
        except (UnicodeDecodeError, ValueError):
            continue
