"""app.budget: UTC calendar periods, the refusal at the boundary, resets (an injected clock),
warnings at 80% and 100%, and the spend re-read from the store."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import pytest

from app.budget import Budgets, alert_level, over_budget, period_bounds, refusal
from app.config import Budget
from app.metrics import Metrics
from app.pricing import NANO
from app.usage import SQLiteStore, Usage


def at(text: str) -> float:
    """Epoch seconds of a UTC time written as 'YYYY-MM-DD HH:MM:SS'."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("day", "2026-12-01 23:59:59", "2026-12-01", "2026-12-02 00:00:00"),
        ("day", "2026-12-02 00:00:00", "2026-12-02", "2026-12-03 00:00:00"),
        ("week", "2026-12-06 23:59:59", "2026-11-30", "2026-12-07 00:00:00"),  # a Sunday
        ("week", "2026-12-07 00:00:00", "2026-12-07", "2026-12-14 00:00:00"),  # a Monday
        ("month", "2026-12-31 23:59:59", "2026-12-01", "2027-01-01 00:00:00"),
        ("month", "2027-01-01 00:00:00", "2027-01-01", "2027-02-01 00:00:00"),
        ("month", "2028-02-29 12:00:00", "2028-02-01", "2028-03-01 00:00:00"),
    ],
)
def test_periods_are_utc_calendar_periods(period: str, now: str, start: str, reset: str) -> None:
    assert period_bounds(period, at(now)) == (start, at(reset))


def test_refused_exactly_at_the_budget_not_a_nano_dollar_before() -> None:
    budget = Budget(usd=50, period="month")
    assert not over_budget(50 * NANO - 1, budget)
    assert over_budget(50 * NANO, budget)
    assert over_budget(51 * NANO, budget)


def test_alert_levels() -> None:
    budget = Budget(usd=10, period="day")
    assert alert_level(8 * NANO - 1, budget) == 0
    assert alert_level(8 * NANO, budget) == 80
    assert alert_level(10 * NANO, budget) == 100


def test_the_refusal_names_the_budget_and_the_reset() -> None:
    now = at("2026-12-31 23:00:00")
    err = refusal("alice", Budget(usd=50, period="month"), 50_120_000_000, now)
    assert err.status == 429
    assert (err.type, err.code) == ("insufficient_quota", "insufficient_quota")
    assert "key 'alice'" in err.message and "$50.00 per month (UTC)" in err.message
    assert "$50.12 spent since 2026-12-01" in err.message
    assert "resets at 2027-01-01 00:00 UTC" in err.message
    headers = dict(err.headers())
    assert headers[b"retry-after"] == b"3600"  # to the reset, not a guess
    assert headers[b"x-should-retry"] == b"false"


class FakeUsage:
    """What Budgets reads: nano-dollars per (day, key)."""

    def __init__(self) -> None:
        self.by_day: dict[tuple[str, str], int] = {}
        self.down = False

    async def spend(self, since: str) -> dict[tuple[str, str], int]:
        if self.down:
            raise OSError("store down")
        return {k: v for k, v in self.by_day.items() if k[0] >= since}


def budgets_with(usage: FakeUsage, **limits: Budget) -> Budgets:
    budgets = Budgets(usage, Metrics())  # type: ignore[arg-type]
    budgets.configure(limits)
    return budgets


@pytest.mark.anyio
async def test_the_spend_resets_at_the_period_boundary() -> None:
    usage = FakeUsage()
    day = Budget(usd=1, period="day")
    budgets = budgets_with(usage, alice=day)
    before = at("2026-12-01 23:59:59")
    usage.by_day[("2026-12-01", "alice")] = NANO  # a full day's budget
    await budgets.sync(before)
    assert budgets.check("alice", day, before) is not None
    after = at("2026-12-02 00:00:00")
    assert budgets.check("alice", day, after) is None  # a new day, even before the next read
    await budgets.sync(after)
    assert budgets.check("alice", day, after) is None
    assert budgets.spent("alice", after) == (day, 0)


@pytest.mark.anyio
async def test_a_month_sums_its_days_and_ignores_the_month_before() -> None:
    usage = FakeUsage()
    month = Budget(usd=10, period="month")
    budgets = budgets_with(usage, alice=month, bob=Budget(usd=10, period="week"))
    usage.by_day.update(
        {
            ("2026-11-30", "alice"): 9 * NANO,  # last month
            ("2026-11-30", "bob"): 3 * NANO,  # but this week (Monday)
            ("2026-12-01", "alice"): 2 * NANO,
            ("2026-12-03", "alice"): 3 * NANO,
            ("2026-12-03", "carol"): 99 * NANO,  # no budget
        }
    )
    now = at("2026-12-03 10:00:00")
    await budgets.sync(now)
    assert budgets.spent("alice", now) == (month, 5 * NANO)
    assert budgets.spent("bob", now) == (Budget(usd=10, period="week"), 3 * NANO)
    assert budgets.spent("carol", now) is None


@pytest.mark.anyio
async def test_costs_count_at_once_and_warn_once_at_80_and_100(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aoai_gateway")
    usage = FakeUsage()
    budget = Budget(usd=1, period="day")
    budgets = budgets_with(usage, alice=budget)
    now = at("2026-12-01 12:00:00")
    await budgets.sync(now)
    budgets.add("alice", NANO // 2, now)
    budgets.add("bob", NANO, now)  # no budget: nothing to track
    assert budgets.check("alice", budget, now) is None
    budgets.add("alice", NANO * 3 // 10, now)  # 80%
    budgets.add("alice", 1, now)
    assert budgets.check("alice", budget, now) is None
    budgets.add("alice", NANO // 5, now)  # 100% and a bit
    refused = budgets.check("alice", budget, now)
    assert refused is not None and "$1.00 spent" in refused.message
    usage.by_day[("2026-12-01", "alice")] = NANO + 1  # what the store now holds
    await budgets.sync(now)  # the same levels again: no new warning
    lines = [r.getMessage() for r in caplog.records]
    assert sum("has used 80% of its budget of $1.00 per day" in m for m in lines) == 1, lines
    assert sum("has used 100% of its budget of $1.00 per day" in m for m in lines) == 1, lines
    text = budgets.metrics.render().decode()
    assert 'aoai_gateway_budget_alerts_total{key="alice",threshold="80"} 1.0' in text
    assert 'aoai_gateway_budget_alerts_total{key="alice",threshold="100"} 1.0' in text
    assert 'aoai_gateway_budget_used_ratio{key="alice"} 1.0' in text


@pytest.mark.anyio
async def test_an_unreadable_store_keeps_the_last_known_spend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = FakeUsage()
    budget = Budget(usd=1, period="day")
    budgets = budgets_with(usage, alice=budget)
    now = at("2026-12-01 12:00:00")
    usage.by_day[("2026-12-01", "alice")] = 2 * NANO
    await budgets.sync(now)
    usage.down = True
    await budgets.sync(now)
    await budgets.sync(now)
    assert budgets.check("alice", budget, now) is not None  # still refused
    assert sum("cannot read the spend" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.anyio
async def test_the_spend_survives_a_restart_in_sqlite(tmp_path: Path) -> None:
    path = str(tmp_path / "usage.db")
    budget = Budget(usd=0.001, period="month")
    usage = Usage(SQLiteStore(path))
    usage.record("alice", "gpt-4o", {"prompt_tokens": 400}, 1_000_000)  # $0.001
    await usage.close()

    again = Usage(SQLiteStore(path))  # a new process
    budgets = Budgets(again, Metrics())
    budgets.configure({"alice": budget})
    now = time.time()
    assert budgets.check("alice", budget, now) is None  # nothing read yet
    await budgets.sync(now)
    assert budgets.check("alice", budget, now) is not None
    # unwritten counts of this process count too
    budgets.configure({"bob": budget})
    again.record("bob", "gpt-4o", {"prompt_tokens": 1}, 999_999)
    await budgets.sync(now)
    assert budgets.check("bob", budget, now) is None
    again.record("bob", "gpt-4o", {"prompt_tokens": 1}, 1)
    await budgets.sync(now)
    assert budgets.check("bob", budget, now) is not None
    await again.close()
