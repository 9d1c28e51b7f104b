"""Shared state in a real Redis: app.redis_state and app.usage.RedisStore, then two gateways.

Each test gets an empty DB of its own on the Redis at 127.0.0.1:6379 (flushed
afterwards); the outage tests start a private redis-server and kill it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from app.metrics import Metrics
from app.redis_state import RedisState
from app.usage import Batch, RedisStore, Usage, today
from tests.conftest import GATEWAY_KEY, base_config
from tests.redis_support import RedisServer, private_db, private_server

pytestmark = pytest.mark.redis

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def redis_url() -> Iterator[str]:
    with private_db() as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with private_server() as server:
        yield server


def _up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("aoai_gateway_state_backend_up", {"backend": "redis"})


# --- RedisState against a real Redis ------------------------------------------


@pytest.mark.anyio
async def test_two_replicas_share_one_rpm_window(redis_url: str) -> None:
    a, b = RedisState(redis_url, Metrics()), RedisState(redis_url, Metrics())
    await a.start()
    await b.start()
    try:
        now = time.time()
        assert await a.admit("alice", 3, None, now) is None
        assert await b.admit("alice", 3, None, now + 1) is None
        assert await a.admit("alice", 3, None, now + 2) is None
        wait = await b.admit("alice", 3, None, now + 3)
        assert wait == pytest.approx(57.0, abs=0.01)  # the first request leaves at now + 60
        assert await a.admit("alice", 3, None, now + 4) == pytest.approx(56.0, abs=0.01)
        assert await b.admit("bob", 3, None, now + 4) is None  # other keys unaffected
        assert await a.admit("alice", 3, None, now + 60.5) is None  # the window slid
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_two_replicas_share_one_tpm_window(redis_url: str) -> None:
    a, b = RedisState(redis_url, Metrics()), RedisState(redis_url, Metrics())
    await a.start()
    await b.start()
    try:
        now = time.time()
        assert await b.admit("alice", None, 1000, now) is None
        await a.add_tokens("alice", 600, now)
        assert await b.admit("alice", None, 1000, now + 1) is None
        await a.add_tokens("alice", 400, now + 1)
        wait = await b.admit("alice", None, 1000, now + 2)
        assert wait is not None and 57.0 <= wait <= 59.0  # the second holding 600 leaves first
        assert await b.admit("bob", None, 1000, now + 2) is None
        assert await b.admit("alice", None, 1000, now + 62.5) is None
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_two_replicas_reserve_and_settle_in_one_tpm_window(redis_url: str) -> None:
    a, b = RedisState(redis_url, Metrics()), RedisState(redis_url, Metrics())
    await a.start()
    await b.start()
    try:
        now = time.time()
        admitted = []
        for i in range(10):  # in flight at once on two replicas: reservations count
            replica = (a, b)[i % 2]
            if await replica.admit("alice", None, 50, now + i / 100, 12) is None:
                admitted.append((replica, now + i / 100))
        assert len(admitted) == 5  # 5 x 12 = 60 >= 50: one estimate over, no more
        for replica, at in admitted:  # each used 5: 25 left, so more fit again
            await replica.settle("alice", at, 12, 5, now + 0.5)
        assert await b.admit("alice", None, 50, now + 0.6, 12) is None
        await b.settle("alice", now + 0.6, 12, 30, now + 0.7)  # 25 + 30 = 55
        assert await a.admit("alice", None, 50, now + 0.8, 12) is not None
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_cooldowns_and_rejected_keys_reach_the_other_replica(redis_url: str) -> None:
    a = RedisState(redis_url, Metrics(), refresh=0.1)
    b = RedisState(redis_url, Metrics(), refresh=0.1)
    await a.start()
    await b.start()
    try:
        until = time.time() + 30
        a.cool("sweden/gpt-4o", until - 0.5)
        a.cool("sweden/gpt-4o", until)  # a burst of 429s: one write, not one each
        assert len(a._tasks) == 1
        a.reject_key("sweden#0", until)
        a.cool("eastus/gpt-4o", time.time() - 1)  # already over: never shared as cooling
        assert a.cooling_until("sweden/gpt-4o") == until  # the writer's mirror at once
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not b.key_rejected("sweden#0", time.time()):
            await asyncio.sleep(0.05)
        assert b.cooling_until("sweden/gpt-4o") == pytest.approx(until - 0.5)
        assert b.key_rejected("sweden#0", time.time())
        assert b.cooling(time.time()) == {"sweden/gpt-4o": pytest.approx(until - 0.5)}
        # a shorter cooldown from b never shortens a's
        b.cool("sweden/gpt-4o", until - 20)
        await asyncio.sleep(0.4)
        assert a.cooling_until("sweden/gpt-4o") == until
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_a_garbled_shared_entry_is_skipped(redis_url: str) -> None:
    until = time.time() + 30
    with redis.Redis.from_url(redis_url) as client:
        client.hset("aoai-gateway:cooling", mapping={"bad": "soon", "sweden/gpt-4o": until})
    metrics = Metrics()
    state = RedisState(redis_url, metrics)
    await state.start()
    try:
        assert state.cooling_until("sweden/gpt-4o") == pytest.approx(until)
        assert state.cooling_until("bad") == 0.0
        assert _up(metrics) == 1.0
    finally:
        await state.close()


@pytest.mark.anyio
async def test_redis_outage_falls_back_then_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aoai_gateway")
    metrics = Metrics()
    state = RedisState(own_redis.url, metrics, refresh=0.1)
    await state.start()
    try:
        assert _up(metrics) == 1.0
        now = time.time()
        assert await state.admit("alice", 2, None, now) is None
        own_redis.stop()
        started = time.monotonic()
        # the first call notices, the rest do not touch Redis; the local window
        # already holds the request admitted through Redis
        assert await state.admit("alice", 2, None, now + 1) is None
        assert await state.admit("alice", 2, None, now + 2) is not None
        assert time.monotonic() - started < 2.0
        assert _up(metrics) == 0.0
        until = time.time() + 30
        state.cool("sweden/gpt-4o", until)  # learnt during the outage
        await asyncio.sleep(0.5)  # several background probes fail
        assert state.cooling_until("sweden/gpt-4o") == until
        own_redis.start()  # same port, empty
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _up(metrics) != 1.0:
            await asyncio.sleep(0.05)
        assert _up(metrics) == 1.0
        with redis.Redis(port=own_redis.port) as client:
            shared = client.hgetall("aoai-gateway:cooling")
        assert float(shared[b"sweden/gpt-4o"]) == pytest.approx(until)  # pushed on recovery
    finally:
        await state.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1, messages
    assert sum("is back;" in m for m in messages) == 1, messages


@pytest.mark.anyio
async def test_a_hung_redis_costs_one_short_timeout(own_redis: RedisServer) -> None:
    metrics = Metrics()
    state = RedisState(own_redis.url, metrics, refresh=0.1)
    await state.start()
    try:
        own_redis.pause()
        started = time.monotonic()
        now = time.time()
        results = await asyncio.gather(*(state.admit("alice", 5, None, now) for _ in range(5)))
        assert results == [None] * 5
        assert await state.admit("alice", 5, None, now) is not None  # local window: 5 counted
        assert time.monotonic() - started < 2.0  # about one socket timeout, not one per call
        assert _up(metrics) == 0.0
        own_redis.pause(False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _up(metrics) != 1.0:
            await asyncio.sleep(0.05)
        assert _up(metrics) == 1.0
    finally:
        await state.close()


@pytest.mark.anyio
async def test_usage_in_redis_is_shared_and_filtered_by_day(redis_url: str) -> None:
    one, two = Usage(RedisStore(redis_url)), Usage(RedisStore(redis_url))
    one.record("alice", "gpt-4o", {"prompt_tokens": 10, "completion_tokens": 5}, 75_000)
    two.record(
        "alice", "gpt-4o", {"prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 1}, 1
    )
    two.record("bob", "o3-mini", {"prompt_tokens": 3, "reasoning_tokens": 16}, None)
    assert await one.flush() and await two.flush()
    # an older day, written straight into the store
    await one.store.add({("2020-01-01", "alice", "gpt-4o"): {"requests": 7}}, Batch("t", 1))
    third = Usage(RedisStore(redis_url))  # a replica that served nothing itself
    report = await third.report(today())
    assert report["alice"]["gpt-4o"] == {
        "requests": 2,
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cached_tokens": 1,
        "reasoning_tokens": 0,
        "images": 0,
        "audio_seconds": 0,
        "characters": 0,
        "cost_nusd": 75_001,
        "unpriced_requests": 0,
        "estimated_requests": 0,
    }
    assert report["bob"]["o3-mini"]["reasoning_tokens"] == 16
    assert report["bob"]["o3-mini"]["unpriced_requests"] == 1
    # what budgets read: nano-dollars per day and key
    assert await third.spend(today()) == {(today(), "alice"): 75_001}
    await third.close()
    everything = await one.report()
    assert everything["alice"]["gpt-4o"]["requests"] == 9
    await one.close()
    await two.close()


@pytest.mark.anyio
async def test_usage_flush_to_a_dead_redis_keeps_the_counts(own_redis: RedisServer) -> None:
    usage = Usage(RedisStore(own_redis.url, timeout=0.5))
    own_redis.stop()
    usage.record("alice", "gpt-4o", {"prompt_tokens": 4}, 10)
    assert not await usage.flush()
    usage.record("alice", "gpt-4o", {"prompt_tokens": 6}, 15)
    own_redis.start()
    assert await usage.flush()
    report = await usage.report()
    assert report["alice"]["gpt-4o"]["requests"] == 2
    assert report["alice"]["gpt-4o"]["prompt_tokens"] == 10
    await usage.close()


@pytest.mark.anyio
async def test_a_flush_stalled_by_a_frozen_redis_is_applied_once(own_redis: RedisServer) -> None:
    """Issue 10: Redis frozen mid-flush ran the timed-out write when it woke, and the
    retry wrote it again. The retry carries the same batch number and is skipped."""
    usage = Usage(RedisStore(own_redis.url, timeout=0.3))
    usage.record("alice", "gpt-4o", {"prompt_tokens": 1}, 1)
    assert await usage.flush()  # a flush before the stall, as under load
    usage.record("alice", "gpt-4o", {"prompt_tokens": 4}, 10)
    own_redis.pause()
    try:
        assert not await usage.flush()  # sent, not answered: Redis runs it once it wakes
    finally:
        own_redis.pause(False)
    usage.record("alice", "gpt-4o", {"prompt_tokens": 6}, 15)
    assert await usage.flush()
    fresh = Usage(RedisStore(own_redis.url))
    counts = (await fresh.report())["alice"]["gpt-4o"]
    assert (counts["requests"], counts["prompt_tokens"], counts["cost_nusd"]) == (3, 11, 26)
    assert await fresh.spend(today()) == {(today(), "alice"): 26}
    await fresh.close()
    await usage.close()


@pytest.mark.anyio
async def test_redis_store_applies_each_batch_of_a_writer_once(redis_url: str) -> None:
    store = RedisStore(redis_url)
    row = ("2020-01-01", "bob", "o3-mini")
    for batch in (Batch("a", 1), Batch("a", 1), Batch("b", 1), Batch("a", 2), Batch("a", 1)):
        await store.add({row: {"requests": 1, "cost_nusd": 5}}, batch)
    assert (await store.read(None))[row] == {"requests": 3, "cost_nusd": 15}
    await store.close()


# --- two gateway processes, one Redis ------------------------------------------


def _team_config(sim: Any, redis_url: str, **keys: Any) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY, "rpm": 3},
            {"name": "ops", "key": "ops-admin-key", "admin": True},
        ]
    }
    config["state"] = {"redis_url": redis_url}
    return config


def _chat(gw: Any, key: str = GATEWAY_KEY, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json=body or CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def _usage(gw: Any) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/usage", headers={"api-key": "ops-admin-key"}, timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json()["keys"])


def test_two_gateways_share_limits_usage_and_cooldowns(
    sim: Any, redis_url: str, start_gateway: Any
) -> None:
    config = _team_config(sim, redis_url)
    one, two = start_gateway(config), start_gateway(config)

    # limits: alice's 3 requests a minute, wherever they land
    assert [_chat(gw).status_code for gw in (one, two, one)] == [200, 200, 200]
    for gw in (two, one):
        refused = _chat(gw)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 50 <= int(refused.headers["retry-after"]) <= 60
    assert sim["sweden"].stats()["requests"] == 3  # the refused ones never went upstream
    assert _chat(two, "ops-admin-key").status_code == 200  # ops has no limit

    # usage: both replicas' requests, seen from either, once flushed (every 2 s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = _usage(two)
        if seen.get("alice", {}).get("gpt-4o", {}).get("requests") == 3:
            break
        time.sleep(0.3)
    assert seen["alice"]["gpt-4o"]["requests"] == 3
    assert seen["alice"]["gpt-4o"]["prompt_tokens"] == 3 * 5  # "hello there": 2 words + 3
    assert seen["ops"]["gpt-4o"]["requests"] == 1

    # cooldown: sweden throttles one request through gateway one ...
    sim["sweden"].fault("429", count=1, retry_after=30)
    assert _chat(one, "ops-admin-key").status_code == 200  # served by eastus
    assert sim["sweden"].stats()["by_status"].get("429") == 1
    # ... and gateway two stops sending to sweden within a second
    deadline = time.monotonic() + 5
    cooling = 'aoai_gateway_deployment_cooling{deployment="gpt-4o",resource="sweden"} 1.0'
    while time.monotonic() < deadline and cooling not in httpx.get(two.url + "/metrics").text:
        time.sleep(0.1)
    assert cooling in httpx.get(two.url + "/metrics").text
    before = sim["sweden"].stats()["requests"]
    for _ in range(3):
        assert _chat(two, "ops-admin-key").status_code == 200
    assert sim["sweden"].stats()["requests"] == before


def test_gateways_keep_serving_when_redis_dies_mid_run(
    sim: Any, own_redis: RedisServer, start_gateway: Any
) -> None:
    config = _team_config(sim, own_redis.url)
    config["gateway"]["keys"][0]["rpm"] = 1000
    gateways = start_gateway(config), start_gateway(config)
    assert [_chat(gw).status_code for gw in gateways] == [200, 200]
    own_redis.stop()
    statuses = []
    started = time.monotonic()
    for i in range(10):
        gw = gateways[i % 2]
        statuses.append(_chat(gw).status_code)  # limited key: admit() falls back
        statuses.append(_chat(gw, "ops-admin-key").status_code)
        stream = {**CHAT, "stream": True}
        statuses.append(_chat(gw, body=stream).status_code)
    assert statuses == [200] * 30
    assert time.monotonic() - started < 20  # no request waited on the dead Redis for long
    for gw in gateways:
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'aoai_gateway_state_backend_up{backend="redis"} 0.0' in metrics
        # usage cannot be read from a dead store: a clear 503, not a 500
        r = httpx.get(gw.url + "/admin/usage", headers={"api-key": "ops-admin-key"}, timeout=10)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "usage_unavailable"
    own_redis.start()  # empty: what was written before the outage is gone
    for gw in gateways:
        metrics = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 'backend="redis"} 1.0' not in metrics:
            time.sleep(0.2)
            metrics = httpx.get(gw.url + "/metrics").text
        assert 'aoai_gateway_state_backend_up{backend="redis"} 1.0' in metrics
    # the counts both replicas kept in memory during the outage reach the new Redis
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = _usage(gateways[0])
        if seen.get("ops", {}).get("gpt-4o", {}).get("requests") == 10:
            break
        time.sleep(0.3)
    assert seen["ops"]["gpt-4o"]["requests"] == 10
    assert 20 <= seen["alice"]["gpt-4o"]["requests"] <= 22
    for gw in gateways:
        gw.stop()
        logs = gw.logs()
        assert logs.count("unreachable") == 1, logs
        assert "Traceback" not in logs


@pytest.mark.slow
def test_usage_equals_answered_requests_across_a_frozen_redis(
    sim: Any, own_redis: RedisServer, start_gateway: Any
) -> None:
    """Issue 10: Redis frozen for 5 s under load double-counted usage (24,809 requests
    recorded for 21,593 answered). Load through one gateway while its Redis is
    SIGSTOPped mid-run; every answered request is recorded exactly once."""
    config = _team_config(sim, own_redis.url)
    config["gateway"]["keys"][0].pop("rpm")  # no limits: the load never waits on Redis
    gw = start_gateway(config)
    answered = 0
    stop_at = time.monotonic() + 9

    async def load() -> None:
        nonlocal answered
        async with httpx.AsyncClient(headers={"api-key": GATEWAY_KEY}, timeout=30) as client:

            async def one_client() -> None:
                nonlocal answered
                while time.monotonic() < stop_at:
                    r = await client.post(gw.base_url + "/chat/completions", json=CHAT)
                    answered += r.status_code == 200

            await asyncio.gather(*(one_client() for _ in range(8)))

    async def freeze() -> None:
        await asyncio.sleep(2.5)  # a flush or two landed
        own_redis.pause()
        try:
            await asyncio.sleep(4.5)  # flushes time out (2 s) while writes wait in Redis
        finally:
            own_redis.pause(False)

    async def run() -> None:
        await asyncio.gather(load(), freeze())

    asyncio.run(run())
    gw.stop()  # flushes what is left
    assert answered > 100
    logs = gw.logs()
    assert "usage: store failed" in logs  # the freeze did stall a flush
    recorded = asyncio.run(_stored_usage(own_redis.url))
    assert recorded["alice"]["gpt-4o"]["requests"] == answered


async def _stored_usage(url: str) -> dict[str, Any]:
    usage = Usage(RedisStore(url))
    try:
        return await usage.report()
    finally:
        await usage.close()


def test_compose_redis_variable_shares_state_when_the_config_names_none(
    redis_url: str, sim: Any, start_gateway: Any
) -> None:
    """docker-compose.yml sets AOAI_GATEWAY_REDIS_URL: a config without state.redis_url
    (an operator's own) still shares usage and limits between the replicas."""
    config = base_config(sim)
    config["gateway"]["keys"][0]["rpm"] = 3
    env = {"AOAI_GATEWAY_REDIS_URL": redis_url}
    first, second = start_gateway(config, env=env), start_gateway(config, env=env)
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    codes = [
        httpx.post(gw.base_url + "/chat/completions", json=CHAT, headers=headers).status_code
        for gw in (first, second, first, second)
    ]
    assert codes == [200, 200, 200, 429]  # one rpm window across both gateways
    metrics = httpx.get(first.url + "/metrics").text
    assert 'aoai_gateway_state_backend_up{backend="redis"} 1.0' in metrics
