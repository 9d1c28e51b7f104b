"""Prometheus metrics (contract names and labels, no secrets, several workers) and the
JSON access log, read from a real gateway."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics
from tests.conftest import GATEWAY_KEY, SIM_KEYS, base_config

ADMIN_KEY = "test-gateway-key-ops"
PRIVATE = "the-words-nobody-may-log"

# name -> label names, exactly as the issues' contracts say (issue 11 added `api`)
CONTRACT = {
    "aoai_gateway_requests": {"model", "key", "status", "api"},
    "aoai_gateway_upstream_requests": {"resource", "deployment", "status", "api"},
    "aoai_gateway_tokens": {"key", "model", "type", "api"},
    "aoai_gateway_cost_usd": {"key", "model"},
    "aoai_gateway_request_duration_seconds": {"model", "api"},
    "aoai_gateway_time_to_first_token_seconds": {"model", "api"},
    "aoai_gateway_failovers": {"reason", "api"},
    "aoai_gateway_deployment_cooling": {"resource", "deployment"},
}


def _config(sim: Any) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY},
            {"name": "ops", "key": ADMIN_KEY, "admin": True},
        ]
    }
    return config


def _chat(gw: Any, stream: bool = False, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:  # a fresh connection each time
        return client.post(
            gw.base_url + "/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": PRIVATE}],
                "stream": stream,
            },
            headers={"Authorization": f"Bearer {GATEWAY_KEY}", **headers},
        )


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def test_metric_names_and_labels_follow_the_contract(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(_config(sim))
    sim["sweden"].fault("429", count=1, retry_after=30)
    assert _chat(gw).status_code == 200  # sweden throttles, eastus serves
    assert _chat(gw, stream=True).status_code == 200  # sweden is cooling: eastus
    assert httpx.post(gw.base_url + "/chat/completions", json={}).status_code == 401

    text = httpx.get(gw.url + "/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, labels in CONTRACT.items():
        assert name in families, f"{name} missing from /metrics"
        samples = [s for s in families[name].samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        for s in samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)

    s = _samples(text)
    assert (
        _value(
            s, "aoai_gateway_requests_total", model="gpt-4o", key="alice", status="200", api="chat"
        )
        == 2
    )
    assert _value(s, "aoai_gateway_requests_total", status="401") == 1
    up = "aoai_gateway_upstream_requests_total"
    assert _value(s, up, resource="sweden", deployment="gpt-4o", status="429") == 1
    assert _value(s, up, resource="eastus", deployment="gpt-4o", status="200") == 2
    assert _value(s, "aoai_gateway_failovers_total", reason="throttled") == 1
    tokens = "aoai_gateway_tokens_total"
    assert _value(s, tokens, key="alice", model="gpt-4o", type="prompt") == 2 * 4
    assert _value(s, tokens, key="alice", model="gpt-4o", type="completion") == 2 * 3
    assert _value(s, "aoai_gateway_request_duration_seconds_count", model="gpt-4o") == 2
    assert _value(s, "aoai_gateway_time_to_first_token_seconds_count", model="gpt-4o") == 2
    cooling = "aoai_gateway_deployment_cooling"
    assert _value(s, cooling, resource="sweden", deployment="gpt-4o") == 1
    assert _value(s, cooling, resource="eastus", deployment="gpt-4o") == 0

    # no key value of any kind, and no message content
    for secret in (GATEWAY_KEY, ADMIN_KEY, *SIM_KEYS, PRIVATE):
        assert secret not in text


def test_access_log_is_one_json_line_per_request_without_content_or_secrets(
    sim: Any, start_gateway: Any
) -> None:
    gw = start_gateway(_config(sim))
    sim["sweden"].fault("429", count=1, retry_after=30)
    assert _chat(gw, **{"x-request-id": "trace-plain"}).status_code == 200
    assert _chat(gw, stream=True, **{"x-request-id": "trace-stream"}).status_code == 200
    wrong = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": PRIVATE}]},
        headers={"Authorization": "Bearer wrong-key-value", "x-request-id": "trace-401"},
    )
    assert wrong.status_code == 401
    gw.stop()
    logs = gw.logs()
    lines = {}
    for line in logs.splitlines():
        if line.startswith("{") and '"request_id"' in line:  # not the gateway's own lines
            entry = json.loads(line)
            lines[entry["request_id"]] = entry
    assert set(lines) == {"trace-plain", "trace-stream", "trace-401"}
    wanted = {"request_id", "key", "model", "resource", "deployment", "status", "attempts",
              "ttft_ms", "duration_ms", "tokens"}  # fmt: skip
    for entry in lines.values():
        assert wanted <= set(entry)
    plain = lines["trace-plain"]
    assert plain["key"] == "alice" and plain["model"] == "gpt-4o"
    assert (plain["resource"], plain["deployment"]) == ("eastus", "gpt-4o")
    assert plain["status"] == 200 and plain["attempts"] == 2  # sweden's 429, then eastus
    assert plain["tokens"]["prompt_tokens"] == 4 and plain["tokens"]["completion_tokens"] == 3
    assert 0 < plain["ttft_ms"] <= plain["duration_ms"]
    stream = lines["trace-stream"]
    assert stream["status"] == 200 and stream["attempts"] == 1
    assert stream["tokens"]["completion_tokens"] == 3  # from the usage chunk
    assert lines["trace-401"]["status"] == 401 and lines["trace-401"]["key"] == "-"
    for secret in (GATEWAY_KEY, ADMIN_KEY, *SIM_KEYS, PRIVATE, "wrong-key-value"):
        assert secret not in logs


def test_counts_from_every_worker_add_up(sim: Any, start_gateway: Any, tmp_path: Path) -> None:
    config = _config(sim)
    config["gateway"]["keys"][0]["rpm"] = 10_000
    env = {"TMPDIR": str(tmp_path)}  # where `serve` creates PROMETHEUS_MULTIPROC_DIR
    gw = start_gateway(config, "--workers", "2", env=env)
    # limits without Redis are per worker: serve says so
    assert "--workers 2 without state.redis_url" in gw.logs()
    [metrics_dir] = tmp_path.glob("aoai-gateway-metrics-*")
    n = 0
    deadline = time.monotonic() + 30
    # fresh connections until both workers have served (each writes its own files)
    while n < 20 or (len(_worker_pids(metrics_dir)) < 2 and time.monotonic() < deadline):
        assert _chat(gw).status_code == 200
        n += 1
    assert len(_worker_pids(metrics_dir)) == 2, "one worker served every request"
    for _ in range(6):  # whichever worker answers the scrape, it reports both
        with httpx.Client(timeout=5) as client:
            s = _samples(client.get(gw.url + "/metrics").text)
        assert _value(s, "aoai_gateway_requests_total", key="alice", status="200") == n
        assert _value(s, "aoai_gateway_tokens_total", key="alice", type="prompt") == 4 * n
        assert _value(s, "aoai_gateway_request_duration_seconds_count", model="gpt-4o") == n


def _worker_pids(metrics_dir: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}


def test_metrics_render_without_a_gateway() -> None:
    metrics = Metrics()
    text = metrics.render().decode()
    assert "aoai_gateway_deployment_cooling" in text  # the family is always there
    metrics.backend_up.labels("redis").set(1)
    assert 'aoai_gateway_state_backend_up{backend="redis"} 1.0' in metrics.render().decode()
