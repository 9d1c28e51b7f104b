"""app.report: usage rows as /admin/usage, the status page and `aoai-gateway usage` show
them - cost in dollars, unpriced never shown as 0, each output format."""

from __future__ import annotations

import csv
import io
import json

import pytest

from app.report import cost_usd, group, money, public, render, summary
from app.usage import Tally

ROWS: Tally = {
    ("2026-11-03", "alice", "gpt-4o"): {
        "requests": 2,
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cost_nusd": 3_500_000,
    },
    ("2026-11-04", "alice", "house"): {"requests": 1, "prompt_tokens": 10, "unpriced_requests": 1},
    ("2026-11-04", "bob", "gpt-4o"): {"requests": 1, "prompt_tokens": 5, "cost_nusd": 12_500},
}


def test_cost_is_null_only_when_every_request_was_unpriced() -> None:
    assert cost_usd({"requests": 2, "cost_nusd": 1_500_000_000}) == 1.5
    assert cost_usd({"requests": 1, "unpriced_requests": 1}) is None
    assert cost_usd({"requests": 3, "cost_nusd": 10, "unpriced_requests": 1}) == 1e-8
    assert cost_usd({}) == 0  # nothing used: nothing spent
    assert money({"requests": 1, "unpriced_requests": 1}) == "unpriced"
    assert money({"requests": 3, "cost_nusd": 500_000_000, "unpriced_requests": 2}) == (
        "0.500000 + 2 unpriced"
    )


def test_public_rows_carry_tokens_cost_and_unpriced() -> None:
    row = public(ROWS[("2026-11-03", "alice", "gpt-4o")])
    assert row == {
        "requests": 2,
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "images": 0,
        "audio_seconds": 0,
        "characters": 0,
        "cost_usd": 0.0035,
        "unpriced_requests": 0,
        "estimated_requests": 0,
    }


def test_summary_per_key_model_day_and_totals() -> None:
    body = summary(ROWS)
    assert body["keys"]["alice"]["house"]["cost_usd"] is None
    assert body["keys"]["bob"]["gpt-4o"]["cost_usd"] == pytest.approx(12_500e-9)
    assert set(body["days"]) == {"2026-11-03", "2026-11-04"}
    assert body["days"]["2026-11-04"]["bob"]["gpt-4o"]["requests"] == 1
    totals = body["totals"]
    assert totals["all"]["requests"] == 4 and totals["all"]["unpriced_requests"] == 1
    assert totals["all"]["cost_usd"] == pytest.approx(3_512_500e-9)
    assert totals["keys"]["alice"]["cost_usd"] == pytest.approx(0.0035)
    assert totals["models"]["gpt-4o"]["requests"] == 3
    assert totals["days"]["2026-11-04"]["unpriced_requests"] == 1


def test_group_is_sorted_by_name() -> None:
    assert list(group(ROWS, "key")) == ["alice", "bob"]
    assert list(group(ROWS, "model")) == ["gpt-4o", "house"]
    assert list(group(ROWS, "day")) == ["2026-11-03", "2026-11-04"]


def test_table_csv_and_json() -> None:
    table = render(ROWS, "model", "table", None).splitlines()
    assert table[0].split()[0] == "MODEL" and table[0].endswith("COST_USD")
    assert table[2].split() == ["gpt-4o", "3", "1,005", "100", "0", "0", "0.003512"]
    assert table[3].split() == ["house", "1", "10", "0", "0", "0", "unpriced"]
    assert table[-1].endswith("0.003512 + 1 unpriced") and table[-1].startswith("TOTAL")

    rows = list(csv.DictReader(io.StringIO(render(ROWS, "day", "csv", "2026-11-01"))))
    assert [r["day"] for r in rows] == ["2026-11-03", "2026-11-04", "TOTAL"]
    assert rows[1]["cost_usd"] == "0.000012500" and rows[1]["unpriced_requests"] == "1"
    assert float(rows[2]["cost_usd"]) == pytest.approx(0.0035125)

    data = json.loads(render(ROWS, "key", "json", "2026-11-01"))
    assert data["since"] == "2026-11-01" and data["by"] == "key"
    assert data["rows"]["alice"]["unpriced_requests"] == 1
    assert data["total"]["requests"] == 4

    # a media column shows in the table only when something used it
    assert "IMAGES" not in table[0]
    with_images = dict(ROWS)
    with_images[("2026-11-05", "carol", "gpt-image-1")] = {"requests": 1, "images": 2}
    media = render(with_images, "key", "table", None).splitlines()
    assert media[0].split()[-2:] == ["IMAGES", "COST_USD"]
    assert media[-1].split()[:7] == ["TOTAL", "5", "1,015", "100", "0", "0", "2"]

    empty = render({}, "key", "table", "2999-01-01").splitlines()
    assert empty[2] == "(no usage recorded since 2999-01-01)"
    assert rows_of(render({}, "key", "csv", None)) == [["key"], ["TOTAL"]]


def rows_of(text: str) -> list[list[str]]:
    return [r[:1] for r in csv.reader(io.StringIO(text))]
