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
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from app.routing import Target

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST

CoolingSource = Callable[[float], Iterable[tuple[str, str, bool]]]


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
        self.requests = Counter(
            "aoai_gateway_requests",
            "Requests answered",
            ["model", "key", "status", "api"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "aoai_gateway_upstream_requests",
            "Upstream attempts by outcome (HTTP status, timeout, connect_error)",
            ["resource", "deployment", "status", "api"],
            registry=r,
        )
        self.tokens = Counter(
            "aoai_gateway_tokens",
            "Tokens reported by Azure",
            ["key", "model", "type", "api"],
            registry=r,
        )
        self.cost = Counter(
            "aoai_gateway_cost_usd",
            "Cost of the answers in USD, from the price table (app.pricing)",
            ["key", "model"],
            registry=r,
        )
        self.unpriced = Counter(
            "aoai_gateway_unpriced_requests",
            "Answers with usage but no price for their model",
            ["key", "model"],
            registry=r,
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
        self.duration = Histogram(
            "aoai_gateway_request_duration_seconds",
            "Time from request to the last byte",
            ["model", "api"],
            buckets=BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "aoai_gateway_time_to_first_token_seconds",
            "Time from request to the first byte of the answer",
            ["model", "api"],
            buckets=BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "aoai_gateway_failovers",
            "Moves to the next key or deployment",
            ["reason", "api"],
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
        if self.multiprocess:
            # No describe-by-collecting at registration: that reads every worker's files,
            # and one a starting worker has just created is still empty (struct.error).
            self._exposition = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self._exposition)  # type: ignore[no-untyped-call]
        else:
            self._exposition = r
        self._exposition.register(self._cooling)
        self._children: dict[tuple[Any, ...], Any] = {}

    # hot-path recording: label children cached by their label tuple
    def request(
        self, api: str, model: str, key: str, status: int, duration: float, ttft: float | None
    ) -> None:
        child = self._children.get(("r", api, model, key, status))
        if child is None:
            child = self._children[("r", api, model, key, status)] = self.requests.labels(
                model, key, str(status), api
            )
        child.inc()
        hist = self._children.get(("d", api, model))
        if hist is None:
            hist = self._children[("d", api, model)] = self.duration.labels(model, api)
        hist.observe(duration)
        if ttft is not None:
            hist = self._children.get(("t", api, model))
            if hist is None:
                hist = self._children[("t", api, model)] = self.ttft.labels(model, api)
            hist.observe(ttft)

    def upstream(self, api: str, target: Target, status: str) -> None:
        key = ("u", api, target.resource, target.deployment, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.upstream_requests.labels(
                target.resource, target.deployment, status, api
            )
        child.inc()

    def failover(self, api: str, reason: str) -> None:
        child = self._children.get(("f", api, reason))
        if child is None:
            child = self._children[("f", api, reason)] = self.failovers.labels(reason, api)
        child.inc()

    def add_tokens(self, api: str, key: str, model: str, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            if n:
                child = self._children.get(("k", api, key, model, kind))
                if child is None:
                    child = self._children[("k", api, key, model, kind)] = self.tokens.labels(
                        key, model, kind.removesuffix("_tokens"), api
                    )
                child.inc(n)

    def add_cost(self, key: str, model: str, nano: int | None) -> None:
        """One answer's cost in nano-dollars; None counts an unpriced answer."""
        if nano is None:
            child = self._children.get(("x", key, model))
            if child is None:
                child = self._children[("x", key, model)] = self.unpriced.labels(key, model)
            child.inc()
        elif nano:
            child = self._children.get(("c", key, model))
            if child is None:
                child = self._children[("c", key, model)] = self.cost.labels(key, model)
            child.inc(nano / 1e9)

    def budget(self, key: str, ratio: float) -> None:
        child = self._children.get(("b", key))
        if child is None:
            child = self._children[("b", key)] = self.budget_used.labels(key)
        child.set(ratio)

    def budget_alert(self, key: str, threshold: int) -> None:
        self.budget_alerts.labels(key, str(threshold)).inc()

    def render(self) -> bytes:
        return generate_latest(self._exposition)
