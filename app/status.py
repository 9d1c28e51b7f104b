"""`GET /status`: one server-rendered HTML page, no JavaScript, no build step.

`collect` gathers what the page shows from the current `Gateway` - the routing
table, cooldowns and rejected keys from the state, recent attempts from
`app.recent`, today's usage - into a `View`; `render` turns a `View` into HTML
with `templates/status.html` (a `string.Template`) and an inline SVG chart.
Every value put in the page goes through `html.escape`. Key values never
reach it: keys are shown as `key1`, `key2` and their hash id; an Entra ID
resource as `entra`, its token's validity and last refresh error, never the token.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import string
import time
from dataclasses import dataclass, field
from importlib import resources

from app.auth import Caller, basic_password, bearer_token
from app.budget import limit_nano, period_bounds
from app.budget import stamp as reset_stamp
from app.errors import Forbidden, Unauthorized
from app.gateway import Gateway
from app.recent import HEALTH_WINDOW, MINUTES, Health, per_minute, summarize
from app.report import cost_usd
from app.upstream_auth import EntraKey, TokenState
from app.usage import FIELDS, UNPRICED, today

log = logging.getLogger("aoai_gateway")

REFRESH_SECONDS = 10
DASH = "\u2013"


@dataclass
class KeyView:
    label: str  # key1, key2, ... or entra
    id: str  # resource#hash, safe to show
    rejected_until: float | None
    token: TokenState | None = None  # an Entra ID resource's token: validity, last error

    @property
    def usable(self) -> bool:
        no_token = self.token is not None and self.token.valid_until is None
        return self.rejected_until is None and not no_token


@dataclass
class DeploymentView:
    resource: str
    deployment: str
    form: str
    priority: int
    weight: str
    cooling_until: float | None
    keys: list[KeyView]
    health: Health


@dataclass
class BudgetView:
    key: str
    budget: str  # "50.00 USD per month (UTC)"
    spent_usd: float
    used: float  # spent / budget
    since: str
    resets: str


@dataclass
class View:
    now: float
    loaded_at: float
    backend: str
    models: dict[str, list[DeploymentView]]
    usage: dict[str, dict[str, dict[str, int]]] | None  # None: the store did not answer
    usage_day: str
    rpm: list[tuple[int, int, int]]
    in_window: int = 0
    notes: list[str] = field(default_factory=list)
    budgets: list[BudgetView] = field(default_factory=list)
    prices_as_of: str = ""


async def collect(gw: Gateway, loaded_at: float, now: float | None = None) -> View:
    now = time.time() if now is None else now
    services = gw.services
    state = services.state
    cooling = state.cooling(now)
    rejected = state.rejected_keys(now)
    events = list(services.recent.events)
    health = summarize(events, now)
    models: dict[str, list[DeploymentView]] = {}
    for model, targets in gw.table.items():
        rows = []
        for t in targets:
            rows.append(
                DeploymentView(
                    resource=t.resource,
                    deployment=t.deployment,
                    form=f"legacy {t.api_version}" if t.api == "legacy" else "v1",
                    priority=t.priority,
                    weight=f"{t.weight:g}" if t.weighted else "",
                    cooling_until=cooling.get(t.id),
                    keys=[
                        KeyView("entra", k.id, rejected.get(k.id), k.state())
                        if isinstance(k, EntraKey)
                        else KeyView(f"key{i}", k.id, rejected.get(k.id))
                        for i, k in enumerate(t.keys, start=1)
                    ],
                    health=health.get(t.id, Health()),
                )
            )
        models[model] = rows
    day = today()
    usage: dict[str, dict[str, dict[str, int]]] | None
    try:
        usage = await services.usage.report(day)
    except Exception as exc:  # the page must render even when the store is down
        log.warning("status page: usage store unavailable: %s", exc)
        usage = None
    return View(
        now=now,
        loaded_at=loaded_at,
        backend=state.backend,
        models=models,
        usage=usage,
        usage_day=day,
        rpm=per_minute(services.recent.minutes, now),
        in_window=sum(1 for event in events if event[0] >= now - HEALTH_WINDOW),
        budgets=budget_views(gw, now),
        prices_as_of=gw.prices.table.as_of,
    )


def budget_views(gw: Gateway, now: float) -> list[BudgetView]:
    out = []
    for key in gw.config.gateway.keys:
        found = gw.services.budgets.spent(key.name, now)
        if key.budget is None or found is None:
            continue
        budget, spent = found
        since, reset = period_bounds(budget.period, now)
        out.append(
            BudgetView(
                key=key.name,
                budget=f"{budget.usd:,.2f} USD per {budget.period} (UTC)",
                spent_usd=spent / 1e9,
                used=spent / max(limit_nano(budget), 1),
                since=since,
                resets=reset_stamp(reset),
            )
        )
    return out


# --- rendering -------------------------------------------------------------------

e = html.escape


def clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S")


def stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rect(x: float, y: float, w: float, h: float, kind: str) -> str:
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" class="{kind}"/>'


def badge(kind: str, text: str, title: str = "") -> str:
    t = f' title="{e(title)}"' if title else ""
    return f'<span class="badge {kind}"{t}>{e(text)}</span>'


def health_cell(d: DeploymentView, now: float) -> str:
    usable = [k for k in d.keys if k.usable]
    h = d.health
    if d.cooling_until is not None:
        left = max(0, round(d.cooling_until - now))
        cooling = f"cooling down until {clock(d.cooling_until)} ({left} s)"
        if h.streak:
            return badge("bad", f"failing ({h.last_error}), {cooling}")
        return badge("warn", cooling)
    if not usable:
        if any(k.token is not None and k.rejected_until is None for k in d.keys):
            return badge("bad", "no Entra ID token")
        return badge("bad", "every key rejected")
    if h.streak:  # the latest attempts failed: failing now, whatever the 15-minute rate says
        tried = "the last attempt" if h.streak == 1 else f"the last {h.streak} attempts"
        return badge("bad", f"failing: {h.last_error}", f"{tried} failed")
    if h.attempts and h.error_rate is not None and h.error_rate >= 0.5:
        return badge("warn", "unstable", f"last error: {h.last_error}")
    if not h.attempts:
        return badge("idle", "no recent traffic")
    return badge("ok", "healthy")


def keys_cell(d: DeploymentView, now: float) -> str:
    parts = []
    for k in d.keys:
        if k.token is not None and k.rejected_until is None:
            parts.append(token_cell(k.token))
        elif k.rejected_until is None:
            parts.append(badge("ok", k.label, k.id))
        else:
            left = max(0, round(k.rejected_until - now))
            parts.append(
                badge(
                    "bad",
                    f"{k.label} rejected",
                    f"{k.id}: skipped until {clock(k.rejected_until)} ({left} s)",
                )
            )
    return " ".join(parts)


def token_cell(t: TokenState) -> str:
    """An Entra ID token's state: until when it is valid, the last refresh error."""
    if t.valid_until is None:
        out = badge("bad", "entra: no token", t.credential)
    else:
        out = badge("ok", f"entra token valid until {clock(t.valid_until)}", t.credential)
    if t.last_error is not None:
        when = f" at {clock(t.last_error_at)}" if t.last_error_at else ""
        out += f'<div class="muted small">last refresh error{when}: {e(t.last_error)}</div>'
    return out


def models_table(view: View) -> str:
    if not view.models:
        return '<p class="muted">No models are configured.</p>'
    rows = []
    for model, deployments in view.models.items():
        for i, d in enumerate(deployments):
            h = d.health
            rate = DASH if h.error_rate is None else f"{h.error_rate:.0%}"
            p50 = DASH if h.p50 is None else f"{h.p50 * 1000:.0f} ms"
            err = (
                f'<div class="muted small">{e(h.last_error)}</div>'
                if h.failed and h.last_error
                else ""
            )
            order = f"p{d.priority}" + (f" · w{d.weight}" if d.weight else "")
            model_cell = (
                f'<td class="model" rowspan="{len(deployments)}">{e(model)}</td>' if i == 0 else ""
            )
            rows.append(
                f"<tr{' class=first' if i == 0 else ''}>{model_cell}"
                f"<td><b>{e(d.resource)}</b> / {e(d.deployment)}"
                f'<div class="muted small">{e(d.form)} · {e(order)}</div></td>'
                f"<td>{health_cell(d, view.now)}</td>"
                f"<td>{keys_cell(d, view.now)}</td>"
                f'<td class="num">{h.attempts}</td>'
                f'<td class="num">{e(rate)}{err}</td>'
                f'<td class="num">{e(p50)}</td></tr>'
            )
    return (
        "<table><thead><tr><th>Model</th><th>Deployment</th><th>Health</th><th>Keys</th>"
        '<th class="num">Attempts</th><th class="num">Errors</th>'
        '<th class="num">p50 first byte</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def usage_table(view: View) -> str:
    if view.usage is None:
        return '<p class="bad-text">The usage store did not answer; usage is not shown.</p>'
    if not view.usage:
        return f'<p class="muted">No usage recorded on {e(view.usage_day)} yet.</p>'
    head = "".join(f'<th class="num">{e(f.replace("_", " "))}</th>' for f in FIELDS)
    head += '<th class="num">cost (USD)</th>'
    rows = []
    for key in sorted(view.usage):
        for model in sorted(view.usage[key]):
            counts = view.usage[key][model]
            cells = "".join(f'<td class="num">{counts.get(f, 0):,}</td>' for f in FIELDS)
            cells += f'<td class="num">{e(cost_cell(counts))}</td>'
            rows.append(f"<tr><td>{e(key)}</td><td>{e(model)}</td>{cells}</tr>")
    return (
        f"<table><thead><tr><th>Key</th><th>Model</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def cost_cell(counts: dict[str, int]) -> str:
    dollars = cost_usd(counts)
    if dollars is None:
        return "unpriced"
    unpriced = counts.get(UNPRICED, 0)
    return f"{dollars:.6f}" + (f" + {unpriced} unpriced" if unpriced else "")


def budgets_table(view: View) -> str:
    if not view.budgets:
        return '<p class="muted">No gateway key has a budget.</p>'
    rows = []
    for b in view.budgets:
        kind = "bad" if b.used >= 1 else "warn" if b.used >= 0.8 else "ok"
        state = "refusing requests" if b.used >= 1 else f"{b.used:.0%} used"
        rows.append(
            f"<tr><td>{e(b.key)}</td><td>{e(b.budget)}</td>"
            f'<td class="num">{b.spent_usd:,.4f}</td><td>{badge(kind, state)}</td>'
            f"<td>{e(b.since)}</td><td>{e(b.resets)}</td></tr>"
        )
    return (
        '<table><thead><tr><th>Key</th><th>Budget</th><th class="num">Spent (USD)</th>'
        "<th>State</th><th>Period from</th><th>Resets</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def rpm_chart(series: list[tuple[int, int, int]], width: int = 1080, height: int = 150) -> str:
    """Stacked bars per minute: served (blue) and failed (red), with a scale."""
    left, bottom, top = 36, 20, 10
    plot_w, plot_h = width - left - 6, height - bottom - top
    peak = max((r for _, r, _ in series), default=0)
    scale = max(peak, 1)
    n = max(len(series), 1)
    slot = plot_w / n
    bar = max(slot * 0.7, 1.0)
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="requests per minute, last {n} minutes">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 6}" y2="{top + plot_h}" '
        'class="axis"/>',
        f'<text x="{left - 6}" y="{top + 4}" class="tick" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    for i, (start, requests, failed) in enumerate(series):
        x = left + i * slot + (slot - bar) / 2
        ok_h = (requests - failed) / scale * plot_h
        bad_h = failed / scale * plot_h
        y = float(top + plot_h)
        tip = f"{clock(start)[:5]} UTC: {requests} requests, {failed} failed"
        out.append(f"<g><title>{e(tip)}</title>")
        if ok_h > 0:
            y -= ok_h
            out.append(_rect(x, y, bar, ok_h, "ok"))
        if bad_h > 0:
            y -= bad_h
            out.append(_rect(x, y, bar, bad_h, "bad"))
        out.append("</g>")
        if i % 5 == 0 or i == len(series) - 1:
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 4}" class="tick" text-anchor="middle">'
                f"{clock(start)[:5]}</text>"
            )
    out.append("</svg>")
    return "".join(out)


def render(view: View) -> str:
    template = string.Template(
        resources.files("app").joinpath("templates/status.html").read_text(encoding="utf-8")
    )
    total = sum(r for _, r, _ in view.rpm)
    failed = sum(f for _, _, f in view.rpm)
    cooling = sum(1 for ds in view.models.values() for d in ds if d.cooling_until is not None)
    summary = [
        ("models", str(len(view.models))),
        (f"requests, last {MINUTES} min", f"{total:,}"),
        ("failed (429/5xx)", f"{failed:,}"),
        ("deployments cooling", str(cooling)),
        ("state", view.backend),
    ]
    tiles = "".join(
        f'<div class="tile"><div class="value">{e(v)}</div><div class="label">{e(k)}</div></div>'
        for k, v in summary
    )
    return template.substitute(
        refresh=str(REFRESH_SECONDS),
        generated=e(stamp(view.now)),
        loaded=e(stamp(view.loaded_at)),
        tiles=tiles,
        chart=rpm_chart(view.rpm),
        minutes=str(MINUTES),
        window=str(int(HEALTH_WINDOW // 60)),
        models=models_table(view),
        usage_day=e(view.usage_day),
        usage=usage_table(view),
        budgets=budgets_table(view),
        prices_as_of=e(view.prices_as_of),
    )


# --- who may see it ----------------------------------------------------------------


class StatusUnauthorized(Unauthorized):
    """401 that also asks a browser for the key (user name ignored, key as password)."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Basic realm="aoai-gateway status", charset="UTF-8"')]


def admin_caller(gw: Gateway, authorization: str | None, api_key: str | None) -> Caller:
    """An admin caller for the page: Bearer, `api-key`, or a browser's Basic prompt."""
    presented = bearer_token(authorization) or basic_password(authorization)
    try:
        who = gw.keys.authenticate(presented, (api_key or "").strip() or None)
    except Unauthorized as exc:
        raise StatusUnauthorized(exc.message) from None
    if not who.admin:
        raise Forbidden("The status page is for admin keys only.")
    return who
