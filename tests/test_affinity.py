"""app/affinity.py and the state backends' owner map: where stored responses live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.affinity import (
    Owner,
    OwnerCache,
    SQLiteAffinity,
    id_hash,
    not_found,
    on_resource,
    unavailable,
)
from app.config import parse
from app.errors import BadRequest, RateLimited, UpstreamFailed
from app.metrics import Metrics
from app.redis_state import RedisState
from app.routing import Target, build_table
from app.state import MemoryState
from tests.redis_support import private_db

A = Owner("sweden", "gpt-4o", "alice")


def test_owner_round_trips_and_garbage_is_none() -> None:
    assert Owner.decode(A.encode()) == A
    for raw in (None, b"", b"[1, 2, 3]", b'["a", "b"]', b"{"):
        assert Owner.decode(raw) is None


def test_id_hash_hides_the_id() -> None:
    h = id_hash("resp_secret")
    assert len(h) == 16 and "resp" not in h
    assert h == id_hash("resp_secret") != id_hash("resp_other")


def test_cache_expires_and_drops_the_oldest() -> None:
    cache = OwnerCache(size=2)
    cache.put("r1", A, 100.0)
    assert cache.get("r1", 99.0) == A
    assert cache.get("r1", 100.0) is None  # expired
    cache.put("r1", A, 200.0)
    cache.put("r2", A, 200.0)
    cache.put("r3", A, 200.0)
    assert cache.get("r1", 0.0) is None
    assert cache.get("r3", 0.0) == A


@pytest.mark.anyio
async def test_sqlite_owners_survive_a_restart_and_reach_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "gw.db")
    first = SQLiteAffinity(path, ttl=3600)
    other = SQLiteAffinity(path, ttl=3600)  # another worker on the same file
    await first.start()
    now = time.time()
    first.remember("resp_1", A, now)  # returns at once: written behind
    assert await first.owner("resp_1", now) == A
    assert await other.owner("resp_1", now) == A  # the write landed (a recheck waits for it)
    assert await other.owner("resp_unknown", now) is None
    await first.close()
    await other.close()
    again = SQLiteAffinity(path, ttl=3600)
    await again.start()
    assert await again.owner("resp_1", time.time()) == A
    assert await again.owner("resp_1", now + 3601) is None  # expired after the TTL
    await again.close()


@pytest.mark.anyio
async def test_remember_never_waits_on_the_store(tmp_path: Path) -> None:
    store = SQLiteAffinity(str(tmp_path / "gw.db"), ttl=60)
    started = time.perf_counter()
    for i in range(2000):
        store.remember(f"resp_{i}", A, time.time())
    assert time.perf_counter() - started < 0.5
    await asyncio.sleep(0)
    await store.close()  # flushes what is pending
    again = SQLiteAffinity(str(tmp_path / "gw.db"), ttl=60)
    assert await again.owner("resp_1999", time.time()) == A
    await again.close()


@pytest.mark.anyio
async def test_memory_state_without_a_file_keeps_owners_in_process() -> None:
    state = MemoryState(ttl=10)
    state.remember("r", A, 1000.0)
    assert await state.owner("r", 1005.0) == A
    assert await state.owner("r", 1011.0) is None


@pytest.fixture
def redis_url() -> Iterator[str]:
    with private_db() as url:
        yield url


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_owners_are_shared_by_replicas_and_expire(redis_url: str) -> None:
    a = RedisState(redis_url, Metrics(), ttl=2)
    b = RedisState(redis_url, Metrics(), ttl=2)
    await a.start()
    await b.start()
    try:
        now = time.time()
        a.remember("resp_r", A, now)
        assert await a.owner("resp_r", now) == A
        assert await b.owner("resp_r", now) == A  # from Redis
        assert await b.owner("resp_none", now) is None
        ttl = await a.redis.pttl("aoai-gateway:response:resp_r")
        assert 0 < ttl <= 2000
    finally:
        await a.close()
        await b.close()


# --- routing decisions for a request naming a stored response -----------------------------


def targets() -> tuple[Target, ...]:
    config = parse(
        """
resources:
  east: {endpoint: "https://east.example.com", keys: [east-key-1]}
  sweden: {endpoint: "https://sweden.example.com", keys: [swe-key-1]}
models:
  gpt-4o: [east/gpt-4o, sweden/gpt-4o-a, sweden/gpt-4o]
""",
        {},
    )
    return build_table(config)["gpt-4o"]


def test_on_resource_keeps_the_owners_resource_its_deployment_first() -> None:
    here = on_resource(targets(), A, "resp_1", "gpt-4o")
    assert [t.id for t in here] == ["sweden/gpt-4o", "sweden/gpt-4o-a"]


def test_on_resource_without_a_deployment_there_is_a_400_naming_it() -> None:
    with pytest.raises(BadRequest) as err:
        on_resource(targets(), Owner("westus", "gpt-4o", "alice"), "resp_1", "gpt-4o")
    assert err.value.param == "previous_response_id"
    assert "westus" in err.value.message and "resp_1" in err.value.message


def test_unavailable_names_response_and_resource_and_says_when() -> None:
    target = targets()[2]
    throttled = unavailable("resp_1", target, RateLimited("busy", 7.0), lambda _: 0.0, 100.0)
    assert throttled.status == 503 and throttled.retry_after == 7.0
    assert "resp_1" in throttled.message and "'sweden'" in throttled.message
    cooling = unavailable("resp_1", target, UpstreamFailed("500"), lambda _: 130.0, 100.0)
    assert cooling.retry_after == 30.0
    assert dict(cooling.headers())[b"retry-after"] == b"30"
    down = unavailable("resp_1", target, UpstreamFailed("keys"), lambda _: 0.0, 100.0)
    assert down.retry_after is None and down.headers() == []  # waiting would not help


def test_not_found_is_the_same_for_unknown_and_foreign_ids() -> None:
    err = not_found("resp_x")
    assert (err.status, err.code, err.param) == (404, "response_not_found", "response_id")
