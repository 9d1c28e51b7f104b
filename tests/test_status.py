"""The status page's pure parts: the recent-traffic window (`app.recent`) and rendering."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from app.operations import Place
from app.recent import MINUTES, Health, Recent, event_of, median, per_minute, summarize
from app.routing import Target, UpstreamKey
from app.status import (
    BudgetView,
    DeploymentView,
    KeyView,
    View,
    budgets_table,
    health_cell,
    keys_cell,
    render,
    rpm_chart,
)
from app.upstream_auth import TokenState


def target(resource: str, deployment: str = "gpt-4o") -> Target:
    return Target(
        model="gpt-4o",
        resource=resource,
        deployment=deployment,
        api="v1",
        api_version=None,
        urls={"chat": f"http://{resource}/openai/v1/chat/completions"},
        place=Place(f"https://{resource}", "v1", "d", "2024-10-21", "2025-04-01-preview"),
        keys=(UpstreamKey(f"{resource}#abc", "secret"),),
    )


@dataclass
class FakeTrace:
    target: Target | None = None
    failures: list[tuple[Target, str]] = field(default_factory=list)


@dataclass
class FakeRecord:
    status: int
    trace: FakeTrace
    ttft: float | None = None
    error: str | None = None


EAST, SWEDEN = target("eastus"), target("sweden")


def test_summarize_counts_failed_attempts_and_the_attempt_that_served() -> None:
    served_after_failover = FakeRecord(200, FakeTrace(EAST, [(SWEDEN, "HTTP 500")]), ttft=0.2)
    served = FakeRecord(200, FakeTrace(SWEDEN), ttft=0.1)
    key2_after_key1 = FakeRecord(200, FakeTrace(EAST, [(EAST, "key rejected")]), ttft=0.4)
    gave_up = FakeRecord(502, FakeTrace(EAST, [(SWEDEN, "timeout"), (EAST, "HTTP 500")]), error="x")
    broken_stream = FakeRecord(200, FakeTrace(SWEDEN), ttft=0.3, error="upstream_stream_error")
    left = FakeRecord(499, FakeTrace(EAST), error="client_disconnected")
    old = FakeRecord(200, FakeTrace(SWEDEN), ttft=9.0)
    now = 10_000.0
    events = [event_of(r, now - 5, 1.0) for r in (served_after_failover, served, key2_after_key1)]
    events += [event_of(gave_up, now - 4, 1.0), event_of(broken_stream, now - 3, 1.0)]
    events += [event_of(left, now - 2, 1.0), event_of(old, now - 3600, 1.0)]  # last: too old
    health = summarize(events, now)

    sweden = health["sweden/gpt-4o"]
    assert (sweden.ok, sweden.failed) == (1, 3)  # served / 500, timeout, broken stream
    assert sweden.last_error == "broke mid-response"
    assert sweden.p50 == 0.1
    east = health["eastus/gpt-4o"]
    assert (east.ok, east.failed) == (2, 2)  # two served / key rejected, 500 (left: neither)
    assert east.error_rate == 0.5
    assert east.p50 is not None and abs(east.p50 - 0.3) < 1e-9


def test_a_deployment_whose_latest_attempts_failed_is_failing_before_it_cools() -> None:
    now = 10_000.0
    served = [
        event_of(FakeRecord(200, FakeTrace(EAST), ttft=0.1), now - 60 + i, 1.0) for i in range(5)
    ]
    failed = FakeRecord(200, FakeTrace(SWEDEN, [(EAST, "HTTP 500")]), ttft=0.1)
    health = summarize([*served, event_of(failed, now - 1, 1.0)], now)
    east = health["eastus/gpt-4o"]
    assert (east.ok, east.failed, east.streak) == (5, 1, 1)  # 17% errors, but failing now
    row = DeploymentView(
        "eastus", "gpt-4o", "v1", 0, "", None, [KeyView("key1", "e#1", None)], east
    )
    assert "failing: HTTP 500" in health_cell(row, now)
    row.cooling_until = now + 10
    assert "failing (HTTP 500), cooling down until" in health_cell(row, now)
    later = event_of(FakeRecord(200, FakeTrace(EAST), ttft=0.1), now - 0.5, 1.0)
    again = summarize([*served, event_of(failed, now - 1, 1.0), later], now)["eastus/gpt-4o"]
    assert again.streak == 0  # a later attempt worked
    row.cooling_until, row.health = None, again
    assert "healthy" in health_cell(row, now)


def test_recent_counts_requests_and_failures_per_minute_and_forgets_old_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [60_000.0]
    monkeypatch.setattr("app.recent.time.time", lambda: clock[0])
    recent = Recent(maxlen=3)
    for status in (200, 200, 429, 502, 400):
        recent.add(FakeRecord(status, FakeTrace()), 0.01)  # type: ignore[arg-type]
    assert len(recent.events) == 3  # bounded
    assert recent.minutes == {1000: [5, 2]}  # 429 and 5xx are failures, a 400 is the caller's
    clock[0] += 60 * (MINUTES - 1)
    recent.add(FakeRecord(200, FakeTrace()), 0.01)  # type: ignore[arg-type]
    assert recent.minutes == {1000: [5, 2], 1000 + MINUTES - 1: [1, 0]}
    clock[0] += 60
    recent.add(FakeRecord(500, FakeTrace()), 0.01)  # type: ignore[arg-type]
    assert recent.minutes == {1000 + MINUTES - 1: [1, 0], 1000 + MINUTES: [1, 1]}


def test_per_minute_fills_gaps_oldest_first() -> None:
    now = 60 * 1000 + 30
    series = per_minute({1000: [4, 1], 998: [2, 0]}, now, span=4)
    assert series == [(997 * 60, 0, 0), (998 * 60, 2, 0), (999 * 60, 0, 0), (1000 * 60, 4, 1)]


def test_median() -> None:
    assert median([]) is None
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_render_escapes_names_and_shows_keys_by_label_only() -> None:
    view = View(
        now=1_800_000_000.0,
        loaded_at=1_799_999_000.0,
        backend="memory",
        models={
            "<script>alert(1)</script>": [
                DeploymentView(
                    resource="eastus",
                    deployment="gpt-4o",
                    form="v1",
                    priority=0,
                    weight="",
                    cooling_until=1_800_000_030.0,
                    keys=[
                        KeyView("key1", "eastus#abc", 1_800_000_100.0),
                        KeyView("key2", "eastus#def", None),
                    ],
                    health=Health(ok=3, failed=1, latencies=[0.1, 0.2, 0.3], last_error="x"),
                )
            ]
        },
        usage={"alice": {"gpt-4o": {"requests": 2, "prompt_tokens": 1234}}},
        usage_day="2027-01-15",
        rpm=[(1_800_000_000 - 60, 3, 1)],
    )
    page = render(view)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "cooling down until" in page and "(30 s)" in page
    assert "key1 rejected" in page and "eastus#abc" in page
    assert "25%" in page and "200 ms" in page
    assert "<td>alice</td><td>gpt-4o</td>" in page and "1,234" in page
    assert "$" not in page.replace("$$", "")  # every template placeholder was filled


def test_cost_and_budgets_on_the_page() -> None:
    view = View(
        now=1_800_000_000.0,
        loaded_at=1_799_999_000.0,
        backend="memory",
        models={},
        usage={
            "alice": {
                "gpt-4o": {"requests": 2, "cost_nusd": 1_234_500},
                "house": {"requests": 1, "unpriced_requests": 1},
            }
        },
        usage_day="2027-01-15",
        rpm=[],
        budgets=[
            BudgetView("alice", "50.00 USD per month (UTC)", 51.5, 1.03, "2027-01-01", "x"),
            BudgetView("<bob>", "5.00 USD per day (UTC)", 4.1, 0.82, "2027-01-15", "y"),
        ],
        prices_as_of="2026-12-01",
    )
    page = render(view)
    assert "cost (USD)" in page and "0.001234" in page and ">unpriced<" in page
    assert "prices as of 2026-12-01" in page
    assert "refusing requests" in page and "82% used" in page and "&lt;bob&gt;" in page
    assert "No gateway key has a budget" in budgets_table(View(0, 0, "memory", {}, {}, "", []))


def test_rpm_chart_stacks_failed_on_served() -> None:
    svg = rpm_chart([(0, 0, 0), (60, 10, 5)], width=200, height=100)
    assert svg.count('class="ok"') == 1 and svg.count('class="bad"') == 1
    assert ">10</text>" in svg  # the scale's top is the busiest minute


def test_entra_token_state_shows_validity_and_last_error_escaped() -> None:
    def row(token: TokenState) -> DeploymentView:
        return DeploymentView(
            resource="eastus",
            deployment="gpt-4o",
            form="v1",
            priority=0,
            weight="",
            cooling_until=None,
            keys=[KeyView("entra", "eastus#entra", None, token)],
            health=Health(),
        )

    now = 1_800_000_000.0
    valid = TokenState("managed identity", now + 3600, now - 60, "<b>endpoint</b> down", now)
    cell = keys_cell(row(valid), now)
    assert "entra token valid until" in cell and "last refresh error at" in cell
    assert "&lt;b&gt;endpoint&lt;/b&gt; down" in cell and "<b>" not in cell
    assert health_cell(row(valid), now) != health_cell(row(replace(valid, valid_until=None)), now)
    missing = row(replace(valid, valid_until=None))
    assert "entra: no token" in keys_cell(missing, now)
    assert "no Entra ID token" in health_cell(missing, now)
