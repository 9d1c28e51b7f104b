"""Budgets in dollars per gateway key: `budget: {usd: 50, period: day|week|month}`.

Decisions are pure functions of the spend and `now` (`period_bounds`,
`over_budget`, `alert_level`, `refusal`), so period boundaries are tested with an
injected clock. Periods are UTC calendar periods: a day from 00:00, a week from
Monday 00:00, a month from the 1st 00:00.

`Budgets` keeps each budgeted key's spend in its current period in memory; the hot
path's check is a dict lookup and a comparison. The spend comes from the usage
store (`Usage.spend`: SQLite, or Redis when `state.redis_url` is set), re-read every
`refresh` seconds together with what this process has not written yet, and goes up
at once when this process records a cost. So a restart keeps the spend (it is in
the store), and with Redis every worker and replica sees the others' spend once
they flush it (`Usage.flush_interval`) and it is re-read: within about 3 s.

A request is admitted while the spend is below the budget and is never cut once
admitted; its cost counts when it ends. Concurrent requests admitted just before
the budget runs out may therefore end above it, by at most what they cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Mapping

from app.config import Budget
from app.errors import BudgetExceeded
from app.metrics import Metrics
from app.pricing import NANO
from app.usage import Usage

log = logging.getLogger("aoai_gateway")

REFRESH = 1.0  # seconds between two reads of the spend from the store
THRESHOLDS = (80, 100)  # percent of the budget that log a warning, once per period


_ALERTS = {
    80: "budget: key '%s' has used %d%% of its budget of %s (%s spent since %s; resets at %s)",
    100: "budget: key '%s' has used %d%% of its budget of %s (%s spent since %s); its "
    "requests are refused until %s",
}


def period_bounds(period: str, now: float) -> tuple[str, float]:
    """(first UTC day of the period holding `now` as YYYY-MM-DD, epoch second it resets)."""
    return _bounds(period, int(now // 86400))


@functools.lru_cache(maxsize=16)
def _bounds(period: str, day: int) -> tuple[str, float]:
    today = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    if period == "day":
        start, end = today, today + dt.timedelta(days=1)
    elif period == "week":
        start = today - dt.timedelta(days=today.weekday())
        end = start + dt.timedelta(days=7)
    elif period == "month":
        start = today.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    midnight = dt.datetime.combine(end, dt.time(), dt.UTC)
    return start.isoformat(), midnight.timestamp()


def limit_nano(budget: Budget) -> int:
    return round(budget.usd * NANO)


def over_budget(spent_nano: int, budget: Budget) -> bool:
    """Spent reaches the budget: refuse (at exactly the budget too)."""
    return spent_nano >= limit_nano(budget)


def alert_level(spent_nano: int, budget: Budget) -> int:
    """The highest threshold (percent) the spend has reached, or 0."""
    used = spent_nano * 100
    reached = [t for t in THRESHOLDS if used >= t * limit_nano(budget)]
    return reached[-1] if reached else 0


def dollars(nano: int | float) -> str:
    value = nano / NANO
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.6g}"


def describe(budget: Budget) -> str:
    return f"{dollars(limit_nano(budget))} per {budget.period} (UTC)"


def stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def refusal(name: str, budget: Budget, spent_nano: int, now: float) -> BudgetExceeded:
    start, reset = period_bounds(budget.period, now)
    return BudgetExceeded(
        f"Budget exceeded for key '{name}': {describe(budget)}, {dollars(spent_nano)} spent "
        f"since {start}. It resets at {stamp(reset)}; retry after the time in the "
        "retry-after header.",
        reset - now,
    )


class Budgets:
    def __init__(self, usage: Usage, metrics: Metrics, refresh: float = REFRESH) -> None:
        self.usage = usage
        self.metrics = metrics
        self.refresh = refresh
        self._limits: dict[str, Budget] = {}
        self._spent: dict[tuple[str, str], int] = {}  # (key name, period start) -> nano-dollars
        self._alerted: dict[tuple[str, str], int] = {}  # -> highest threshold logged
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def configure(self, limits: Mapping[str, Budget]) -> None:
        """The budgets of the configuration in force (at startup and on every reload)."""
        self._limits = dict(limits)

    def spent(self, name: str, now: float) -> tuple[Budget, int] | None:
        budget = self._limits.get(name)
        if budget is None:
            return None
        start, _ = period_bounds(budget.period, now)
        return budget, self._spent.get((name, start), 0)

    # hot path ----------------------------------------------------------------
    def check(self, name: str, budget: Budget, now: float) -> BudgetExceeded | None:
        """Before anything goes upstream: a refusal if the key's budget is used up."""
        start, _ = period_bounds(budget.period, now)
        spent = self._spent.get((name, start), 0)
        return refusal(name, budget, spent, now) if over_budget(spent, budget) else None

    def add(self, name: str, nano: int, now: float) -> None:
        """A cost this process just recorded (also in the usage tally)."""
        budget = self._limits.get(name)
        if budget is None or not nano:
            return
        start, _ = period_bounds(budget.period, now)
        key = (name, start)
        self._spent[key] = spent = self._spent.get(key, 0) + nano
        self._observe(name, budget, start, spent, now)

    # background --------------------------------------------------------------
    async def sync(self, now: float | None = None) -> None:
        """Re-read every budgeted key's spend in its current period from the store."""
        now = time.time() if now is None else now
        limits = self._limits
        if not limits:
            return
        starts = {name: period_bounds(b.period, now)[0] for name, b in limits.items()}
        try:
            by_day = await self.usage.spend(min(starts.values()))
        except Exception as exc:  # keep checking against what is known
            if not self._failing:
                log.error("budget: cannot read the spend (%s); checking the last known one", exc)
            self._failing = True
            return
        if self._failing:
            log.warning("budget: the spend can be read again")
            self._failing = False
        spent = {(name, start): 0 for name, start in starts.items()}
        for (day, name), nano in by_day.items():
            start = starts.get(name)
            if start is not None and day >= start:
                spent[(name, start)] += nano
        self._spent = spent
        for (name, start), nano in spent.items():
            self._observe(name, limits[name], start, nano, now)

    def _observe(self, name: str, budget: Budget, start: str, spent: int, now: float) -> None:
        self.metrics.budget(name, spent / max(limit_nano(budget), 1))
        level = alert_level(spent, budget)
        known = self._alerted.get((name, start), 0)
        if level <= known:
            return
        self._alerted[(name, start)] = level
        _, reset = period_bounds(budget.period, now)
        for threshold in THRESHOLDS:  # a jump past both still says both
            if known < threshold <= level:
                self.metrics.budget_alert(name, threshold)
                log.warning(_ALERTS[threshold], name, threshold, describe(budget), dollars(spent),
                            start, stamp(reset))  # fmt: skip

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            with contextlib.suppress(Exception):  # sync logs its own failures
                await self.sync()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
