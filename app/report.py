"""Usage and cost reports from stored rows: pure functions, no I/O.

`/admin/usage`, the status page and `aoai-gateway usage` all read the same rows
(day x key x model -> counters, see `app.usage`) and show them through here. A
row's cost is stored in nano-dollars; reports give `cost_usd`, which is null when
every request of the row was unpriced (no price for its model: never a silent 0),
and `unpriced_requests` says how many were.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

from app.pricing import usd
from app.usage import COLUMNS, COST, ESTIMATED, FIELDS, UNPRICED, Tally

By = Literal["key", "model", "day"]
Counters = dict[str, int]
_AXIS = {"day": 0, "key": 1, "model": 2}


def add(into: Counters, counts: Mapping[str, int]) -> Counters:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n
    return into


def total(rows: Iterable[Mapping[str, int]]) -> Counters:
    out = dict.fromkeys(COLUMNS, 0)
    for counts in rows:
        add(out, counts)
    return out


def group(rows: Tally, by: By) -> dict[str, Counters]:
    """Counters summed per key, per model or per day, in sorted order."""
    axis = _AXIS[by]
    out: dict[str, Counters] = {}
    for row in sorted(rows):
        add(out.setdefault(row[axis], dict.fromkeys(COLUMNS, 0)), rows[row])
    return dict(sorted(out.items()))


def cost_usd(counts: Mapping[str, int]) -> float | None:
    """Dollars, or None when nothing in these counters had a price."""
    requests, unpriced = counts.get("requests", 0), counts.get(UNPRICED, 0)
    if requests and unpriced >= requests:
        return None
    return usd(counts.get(COST, 0))


def public(counts: Mapping[str, int]) -> dict[str, Any]:
    """Counters as reports show them: token fields, `cost_usd`, `unpriced_requests`,
    `estimated_requests`."""
    out: dict[str, Any] = {f: counts.get(f, 0) for f in FIELDS}
    out["cost_usd"] = cost_usd(counts)
    out["unpriced_requests"] = counts.get(UNPRICED, 0)
    out["estimated_requests"] = counts.get(ESTIMATED, 0)
    return out


def summary(rows: Tally) -> dict[str, Any]:
    """The `/admin/usage` body (without `since` / `as_of`)."""
    keys: dict[str, dict[str, Any]] = {}
    days: dict[str, dict[str, dict[str, Any]]] = {}
    per_key_model: dict[tuple[str, str], Counters] = {}
    for (day, key, model), counts in sorted(rows.items()):
        add(per_key_model.setdefault((key, model), {}), counts)
        days.setdefault(day, {}).setdefault(key, {})[model] = public(counts)
    for (key, model), counts in per_key_model.items():
        keys.setdefault(key, {})[model] = public(counts)
    return {
        "keys": keys,
        "days": days,
        "totals": {
            "all": public(total(rows.values())),
            "keys": {k: public(c) for k, c in group(rows, "key").items()},
            "models": {m: public(c) for m, c in group(rows, "model").items()},
            "days": {d: public(c) for d, c in group(rows, "day").items()},
        },
    }


# --- text renderings (aoai-gateway usage) -----------------------------------------------

_SHORT = {
    "prompt_tokens": "prompt",
    "completion_tokens": "completion",
    "cached_tokens": "cached",
    "reasoning_tokens": "reasoning",
}


def money(counts: Mapping[str, int]) -> str:
    """`12.345678`, `unpriced`, or `0.500000 + 2 unpriced`."""
    dollars = cost_usd(counts)
    if dollars is None:
        return "unpriced"
    unpriced = counts.get(UNPRICED, 0)
    text = f"{dollars:.6f}"
    return f"{text} + {unpriced} unpriced" if unpriced else text


def render(rows: Tally, by: By, fmt: Literal["table", "csv", "json"], since: str | None) -> str:
    groups = group(rows, by)
    overall = total(rows.values())
    if fmt == "json":
        body = {
            "since": since,
            "by": by,
            "rows": {name: public(c) for name, c in groups.items()},
            "total": public(overall),
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([by, *FIELDS, "cost_usd", "unpriced_requests", "estimated_requests"])
        for name, c in [*groups.items(), ("TOTAL", overall)]:
            dollars = cost_usd(c)
            writer.writerow(
                [
                    name,
                    *(c.get(f, 0) for f in FIELDS),
                    "" if dollars is None else f"{dollars:.9f}",
                    c.get(UNPRICED, 0),
                    c.get(ESTIMATED, 0),
                ]
            )
        return buf.getvalue().rstrip("\n")
    # the token columns always; a media column (images, ...) only when something used it
    shown = [f for f in FIELDS if f in _SHORT or f == "requests" or overall.get(f)]
    table = [(by.upper(), *(_SHORT.get(f, f).upper() for f in shown), "COST_USD")]
    for name, c in [*groups.items(), ("TOTAL", overall)]:
        table.append((name, *(f"{c.get(f, 0):,}" for f in shown), money(c)))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for i, r in enumerate(table):
        rest = zip(r[1:], widths[1:], strict=True)
        cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in rest)]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or i == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    if not groups:
        lines.insert(2, "(no usage recorded" + (f" since {since})" if since else ")"))
    return "\n".join(lines)
