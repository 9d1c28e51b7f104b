"""Prometheus metrics, low-cardinality labels, key names never key values.

Names are a contract (dashboards depend on them):

    aoai_gateway_requests_total{model,key,status,api}
    aoai_gateway_upstream_requests_total{resource,deployment,status,api}
    aoai_gateway_tokens_total{key,model,type,api}
    aoai_gateway_cost_usd_total{key,model}
    aoai_gateway_unpriced_requests_total{key,model}
    aoai_gateway_budget_used_ratio{key}
    aoai_gateway_budget_alerts_total{key,threshold}
    aoai_gateway_request_duration_seconds{model,api}
    aoai_gateway_time_to_first_token_seconds{model,api}
    aoai_gateway_failovers_total{reason,api}
    aoai_gateway_deployment_cooling{resource,deployment}
    aoai_gateway_state_backend_up{backend}

`api` is the operation: `chat`, `responses`, `embeddings`, `images`, `images_edits`,
`transcriptions`, `translations`, `speech` (`app.operations`).

With several uvicorn workers, `serve` sets PROMETHEUS_MULTIPROC_DIR before the
workers start and `/metrics` aggregates every worker's counters
(prometheus-client's multiprocess mode). The cooling gauge is read from the
state at scrape time, so it is exact with Redis and per-worker without it.

The families a request touches are counted in plain numbers (a dict per family,
label values -> total; a histogram row is its bucket counts and sum) and exported
by a custom collector at scrape time, prometheus-client's documented way to
expose one's own counters: the library's per-sample lock, value object and
bucket loop cost ~5% of a request's CPU. In multiprocess mode the plain numbers
are also copied into the library's file-backed counters when a request's last
record is made (and before a scrape), so every worker's files are current when
its answer has gone out. The budget and backend gauges change rarely and stay library objects.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from app.routing import Target

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST
_LE = (*(floatToGoString(b) for b in BUCKETS), "+Inf")  # type: ignore[no-untyped-call]

CoolingSource = Callable[[float], Iterable[tuple[str, str, bool]]]
Labels = tuple[Any, ...]


def _strings(values: Labels) -> list[str]:
    return [str(v) for v in values]


def _token_type(values: Labels) -> list[str]:
    key, model, kind, api = values  # kind as Azure names it: prompt_tokens
    return [key, model, kind.removesuffix("_tokens"), api]


class _Counts:
    """A counter family as plain numbers: label values (raw) -> total."""

    __slots__ = ("doc", "labels", "name", "pending", "render", "values")

    def __init__(
        self,
        name: str,
        doc: str,
        labels: list[str],
        render: Callable[[Labels], list[str]] = _strings,
    ) -> None:
        self.name, self.doc, self.labels, self.render = name, doc, labels, render
        self.values: dict[Labels, float] = {}
        self.pending: dict[Labels, float] | None = None  # multiprocess: not yet in the files

    def add(self, labels: Labels, n: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + n
        if self.pending is not None:
            self.pending[labels] = self.pending.get(labels, 0) + n

    def family(self, scale: float = 1.0) -> Metric:
        out = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for k, v in list(self.values.items()):
            out.add_metric(self.render(k), v * scale)
        return out


class _Timings:
    """A histogram family as plain numbers: label values -> [count per bucket..., sum]."""

    __slots__ = ("doc", "labels", "name", "pending", "values")

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[Labels, list[float]] = {}
        self.pending: list[tuple[Labels, float]] | None = None  # multiprocess: not yet in files

    def observe(self, labels: Labels, value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(BUCKETS) + 2)
        row[bisect_left(BUCKETS, value)] += 1  # le: the first bound >= value
        row[-1] += value
        if self.pending is not None:
            self.pending.append((labels, value))

    def family(self) -> Metric:
        out = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for k, row in list(self.values.items()):
            total, buckets = 0.0, []
            for le, n in zip(_LE, row, strict=False):
                total += n
                buckets.append((le, total))
            out.add_metric(_strings(k), buckets, sum_value=row[-1])
        return out


class _Collector:
    """Exports the plain numbers at scrape time (single-process mode)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield m.requests.family()
        yield m.upstream_requests.family()
        yield m.tokens.family()
        yield m.cost.family(1e-9)  # counted in nano-dollars: exact sums
        yield m.unpriced.family()
        yield m.failovers.family()
        yield m.duration.family()
        yield m.ttft.family()


class _CoolingCollector:
    def __init__(self, source: Callable[[], CoolingSource | None]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "aoai_gateway_deployment_cooling",
            "1 while a deployment sits out after a 429, 5xx or timeout",
            labels=["resource", "deployment"],
        )
        source = self._source()
        if source is not None:
            for resource, deployment, cooling in source(time.time()):
                family.add_metric([resource, deployment], 1.0 if cooling else 0.0)
        yield family


class Metrics:
    def __init__(self, cooling: Callable[[], CoolingSource | None] = lambda: None) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = _Counts(
            "aoai_gateway_requests", "Requests answered", ["model", "key", "status", "api"]
        )
        self.upstream_requests = _Counts(
            "aoai_gateway_upstream_requests",
            "Upstream attempts by outcome (HTTP status, timeout, connect_error)",
            ["resource", "deployment", "status", "api"],
        )
        self.tokens = _Counts(
            "aoai_gateway_tokens",
            "Tokens reported by Azure",
            ["key", "model", "type", "api"],
            _token_type,
        )
        self.cost = _Counts(
            "aoai_gateway_cost_usd",
            "Cost of the answers in USD, from the price table (app.pricing)",
            ["key", "model"],
        )
        self.unpriced = _Counts(
            "aoai_gateway_unpriced_requests",
            "Answers with usage but no price for their model",
            ["key", "model"],
        )
        self.failovers = _Counts(
            "aoai_gateway_failovers", "Moves to the next key or deployment", ["reason", "api"]
        )
        self.duration = _Timings(
            "aoai_gateway_request_duration_seconds",
            "Time from request to the last byte",
            ["model", "api"],
        )
        self.ttft = _Timings(
            "aoai_gateway_time_to_first_token_seconds",
            "Time from request to the first byte of the answer",
            ["model", "api"],
        )
        self.budget_used = Gauge(
            "aoai_gateway_budget_used_ratio",
            "Spend in the current budget period / the key's budget (1 = exhausted)",
            ["key"],
            registry=r,
            multiprocess_mode="max",
        )
        self.budget_alerts = Counter(
            "aoai_gateway_budget_alerts",
            "A key's spend crossed 80% or 100% of its budget (once per period and process)",
            ["key", "threshold"],
            registry=r,
        )
        self.backend_up = Gauge(
            "aoai_gateway_state_backend_up",
            "1 while the shared state backend answers",
            ["backend"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self._cooling = _CoolingCollector(cooling)
        self._files: list[tuple[_Counts, Counter, float]] = []
        self._file_timings: list[tuple[_Timings, Histogram]] = []
        if self.multiprocess:
            self._mirror_in_files(r)
            # No describe-by-collecting at registration: that reads every worker's files,
            # and one a starting worker has just created is still empty (struct.error).
            self._exposition = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self._exposition)  # type: ignore[no-untyped-call]
        else:
            r.register(_Collector(self))
            self._exposition = r
        self._exposition.register(self._cooling)

    def _mirror_in_files(self, r: CollectorRegistry) -> None:
        """Multiprocess mode: library counters whose files the scraping worker reads."""
        for counts, scale in (
            (self.requests, 1.0),
            (self.upstream_requests, 1.0),
            (self.tokens, 1.0),
            (self.cost, 1e-9),
            (self.unpriced, 1.0),
            (self.failovers, 1.0),
        ):
            counts.pending = {}
            lib = Counter(counts.name, counts.doc, counts.labels, registry=r)
            self._files.append((counts, lib, scale))
        for timings in (self.duration, self.ttft):
            timings.pending = []
            hist = Histogram(timings.name, timings.doc, timings.labels, buckets=BUCKETS, registry=r)
            self._file_timings.append((timings, hist))

    def sync(self) -> None:
        """Multiprocess mode: copy what was counted since the last sync into the files."""
        for counts, lib, scale in self._files:
            assert counts.pending is not None
            for k, n in counts.pending.items():
                lib.labels(*counts.render(k)).inc(n * scale)
            counts.pending.clear()
        for timings, hist in self._file_timings:
            assert timings.pending is not None
            for labels, value in timings.pending:
                hist.labels(*_strings(labels)).observe(value)
            timings.pending.clear()

    # hot-path recording: plain dict arithmetic, label values kept raw until a scrape.
    # `request` is a request's last record (after its upstream attempts, tokens, cost).
    def request(
        self, api: str, model: str, key: str, status: int, duration: float, ttft: float | None
    ) -> None:
        self.requests.add((model, key, status, api))
        self.duration.observe((model, api), duration)
        if ttft is not None:
            self.ttft.observe((model, api), ttft)
        if self._files:  # multiprocess: into the files before any worker can be scraped
            self.sync()

    def upstream(self, api: str, target: Target, status: str) -> None:
        self.upstream_requests.add((target.resource, target.deployment, status, api))

    def failover(self, api: str, reason: str) -> None:
        self.failovers.add((reason, api))

    def add_tokens(self, api: str, key: str, model: str, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            if n:
                self.tokens.add((key, model, kind, api), n)

    def add_cost(self, key: str, model: str, nano: int | None) -> None:
        """One answer's cost in nano-dollars; None counts an unpriced answer."""
        if nano is None:
            self.unpriced.add((key, model))
        elif nano:
            self.cost.add((key, model), nano)

    def budget(self, key: str, ratio: float) -> None:
        self.budget_used.labels(key).set(ratio)

    def budget_alert(self, key: str, threshold: int) -> None:
        self.budget_alerts.labels(key, str(threshold)).inc()

    def render(self) -> bytes:
        if self._files:
            self.sync()  # this worker's latest counts, before its files are read
        return generate_latest(self._exposition)
