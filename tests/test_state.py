"""app.state.MemoryState, and RedisState's fallback to it when Redis is unreachable."""

from __future__ import annotations

import logging
import time

import pytest

from app.metrics import Metrics
from app.redis_state import RedisState
from app.state import WINDOW, MemoryState
from tests.conftest import free_port

pytestmark = pytest.mark.anyio


def test_rpm_window_slides_and_says_how_long_to_wait() -> None:
    s = MemoryState()
    assert s.admit_now("alice", 2, None, 1000.0) is None
    assert s.admit_now("alice", 2, None, 1010.0) is None
    assert s.admit_now("alice", 2, None, 1020.0) == pytest.approx(40.0)  # first one + 60 s
    assert s.admit_now("bob", 2, None, 1020.0) is None  # other keys have their own window
    assert s.admit_now("alice", 2, None, 1060.0) is None  # the 1000.0 request left the window
    assert s.admit_now("alice", 2, None, 1061.0) == pytest.approx(9.0)


def test_refused_requests_are_not_counted() -> None:
    s = MemoryState()
    s.admit_now("alice", 1, None, 0.0)
    for t in range(1, 30):
        assert s.admit_now("alice", 1, None, float(t)) is not None
    assert s.admit_now("alice", 1, None, WINDOW) is None


def test_tpm_refuses_once_the_window_holds_tpm_tokens() -> None:
    s = MemoryState()
    assert s.admit_now("alice", None, 100, 0.0) is None
    s.add_tokens_now("alice", 60, 1.0)
    assert s.admit_now("alice", None, 100, 2.0) is None  # 60 < 100
    s.add_tokens_now("alice", 40, 3.0)
    assert s.admit_now("alice", None, 100, 4.0) == pytest.approx(57.0)  # 60 tokens leave at 61
    assert s.admit_now("bob", None, 100, 4.0) is None
    assert s.admit_now("alice", None, 100, 61.5) is None  # 40 left in the window


def test_tpm_reserves_each_admitted_requests_estimate_until_it_settles() -> None:
    """Issue 10: concurrent requests were all admitted, none having used tokens yet."""
    s = MemoryState()
    admitted = [t for t in range(30) if s.admit_now("alice", None, 50, float(t) / 100, 12) is None]
    assert admitted == [0, 1, 2, 3, 4]  # 5 x 12 = 60: the window overshoots by one estimate
    # they finish: each used 5 tokens, so 25 are left in the window and more fit
    for t in admitted:
        s.settle_now("alice", float(t) / 100, 12, 5, 1.0)
    for _ in range(3):  # 25 -> 37 -> 49 -> 61
        assert s.admit_now("alice", None, 50, 1.0, 12) is None
    assert s.admit_now("alice", None, 50, 1.0, 12) is not None


def test_settle_without_a_reservation_adds_what_was_used() -> None:
    s = MemoryState()
    assert s.admit_now("alice", None, 10, 0.0) is None
    s.settle_now("alice", 0.0, 0, 10, 1.0)
    assert s.admit_now("alice", None, 10, 2.0) == pytest.approx(59.0)  # counted at 1.0


def test_a_reservation_that_left_the_window_counts_its_usage_now() -> None:
    s = MemoryState()
    assert s.admit_now("alice", None, 100, 0.0, 90) is None
    assert s.admit_now("alice", None, 100, 61.0, 5) is None  # the 90 left at 60
    s.settle_now("alice", 0.0, 90, 120, 62.0)  # a 62 s stream used 120
    assert s.admit_now("alice", None, 100, 63.0) is not None
    assert s.admit_now("alice", None, 100, 122.5) is None


async def test_admit_and_settle_through_the_protocol() -> None:
    s = MemoryState()
    assert await s.admit("alice", None, 20, 0.0, 30) is None
    assert await s.admit("alice", None, 20, 0.1, 30) is not None
    await s.settle("alice", 0.0, 30, 0, 0.2)  # failed: nothing used, the reservation goes
    assert await s.admit("alice", None, 20, 0.3, 30) is None


def test_no_limits_always_admits_and_counts() -> None:
    s = MemoryState()
    for i in range(100):
        assert s.admit_now("alice", None, None, float(i) / 10) is None
    assert s.admit_now("alice", 100, None, 10.0) is not None  # all 100 were counted


def test_cooldowns_only_grow_and_expire() -> None:
    s = MemoryState()
    s.cool("eastus/gpt-4o", 100.0)
    s.cool("eastus/gpt-4o", 50.0)
    assert s.cooling_until("eastus/gpt-4o") == 100.0
    assert s.cooling(99.0) == {"eastus/gpt-4o": 100.0}
    assert s.cooling(100.0) == {}
    assert s.cooling_until("sweden/gpt-4o") == 0.0


def test_rejected_keys_expire_and_can_be_forgotten() -> None:
    s = MemoryState()
    s.reject_key("eastus#1", 100.0)
    assert s.key_rejected("eastus#1", 99.0)
    assert not s.key_rejected("eastus#1", 100.0)
    assert s.rejected_keys(50.0) == {"eastus#1": 100.0}
    s.forget_key("eastus#1")
    assert not s.key_rejected("eastus#1", 50.0)


def _up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("aoai_gateway_state_backend_up", {"backend": "redis"})


async def test_unreachable_redis_serves_from_local_state_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"  # nothing listens there
    state = RedisState(url, metrics, refresh=0.05)
    caplog.set_level(logging.INFO, logger="aoai_gateway")
    started = time.monotonic()
    await state.start()
    try:
        assert _up(metrics) == 0.0
        now = time.time()
        # limits keep working, with MemoryState semantics
        assert await state.admit("alice", 2, None, now) is None
        assert await state.admit("alice", 2, None, now) is None
        wait = await state.admit("alice", 2, None, now)
        assert wait == pytest.approx(WINDOW)
        await state.add_tokens("bob", 500, now)
        assert await state.admit("bob", None, 500, now) is not None
        # cooldowns and rejected keys too
        state.cool("eastus/gpt-4o", now + 30)
        state.reject_key("eastus#1", now + 30)
        assert state.cooling_until("eastus/gpt-4o") == now + 30
        assert state.key_rejected("eastus#1", now)
        assert state.cooling(now) == {"eastus/gpt-4o": now + 30}
        for _ in range(5):  # the background probe keeps failing quietly
            await state.sync()
    finally:
        await state.close()
    assert time.monotonic() - started < 3.0  # nothing waited on the dead Redis
    errors = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert "s3cret-pass" not in caplog.text
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/0" in errors[0].getMessage()


async def test_a_bad_redis_url_is_a_config_error() -> None:
    from app.config import ConfigError

    with pytest.raises(ConfigError, match=r"state\.redis_url"):
        RedisState("http://127.0.0.1:6379", Metrics())
