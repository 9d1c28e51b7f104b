"""Cost and budgets through the real gateway, driven with the openai SDK: cost in
/admin/usage, metrics, the status page and the access log; router-style answers; unpriced
models; `aoai-gateway usage` in each format; budget refusals shared by two gateways on one
Redis and kept across a restart."""

from __future__ import annotations

import concurrent.futures
import csv
import datetime as dt
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    GATEWAY_KEY,
    ROOT,
    SIM_KEYS,
    Sim,
    base_config,
    start_sim,
    stop,
    wait_for,
    wait_http,
)
from tests.redis_support import private_db

ADMIN_KEY = "test-gateway-key-ops"
HELLO = [{"role": "user", "content": "hello there"}]  # 5 prompt + 4 completion tokens
# gpt-4o priced by `pricing:` below at $5 / $20 per 1M: 5 x 5000 + 4 x 20000 nano-dollars
GPT4O_CALL = 105_000
NANO_CALL = 5 * 100 + 4 * 400  # the router's choice, gpt-4.1-nano: $0.10 / $0.40 (built in)


@pytest.fixture(scope="module")
def azure() -> Iterator[Sim]:
    """One simulated resource with a model router, a fine-tune nobody priced and a PTU."""
    sim = start_sim(
        "eastus", "--deployments", "gpt-4o,model-router,my-finetune,ptu", "--latency", "0.4"
    )
    yield sim
    stop(sim.proc)


def _config(sim: Sim, **key: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "keys": [
                {"name": "alice", "key": GATEWAY_KEY, **key},
                {"name": "ops", "key": ADMIN_KEY, "admin": True},
            ]
        },
        "resources": {"eastus": {"endpoint": sim.url, "keys": list(SIM_KEYS)}},
        "models": {
            "gpt-4o": ["eastus/gpt-4o"],
            "auto": ["eastus/model-router"],
            "house": ["eastus/my-finetune"],
            "gpt-4o-ptu": ["eastus/ptu"],
        },
        "pricing": {
            "gpt-4o": {"input": 5, "cached_input": 2.5, "output": 20},  # over the built-in 2.50/10
            "eastus/ptu": {"input": 0, "output": 0},
        },
    }


def _admin(gw: Any, path: str, **params: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"api-key": ADMIN_KEY}, params=params, timeout=5)


def _cli(gw: Any, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app", "usage", "--config", str(gw.config_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cost_everywhere_usage_is_shown(azure: Sim, start_gateway: Any) -> None:
    gw = start_gateway(_config(azure))
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    for _ in client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True):
        pass
    routed = client.chat.completions.create(model="auto", messages=HELLO)
    assert routed.model == "gpt-4.1-nano-2025-04-14"  # the router says what answered
    client.chat.completions.create(model="house", messages=HELLO)
    client.chat.completions.create(model="gpt-4o-ptu", messages=HELLO)

    body = _admin(gw, "/admin/usage").json()
    alice = body["keys"]["alice"]
    assert alice["gpt-4o"]["requests"] == 2
    assert alice["gpt-4o"]["cost_usd"] == pytest.approx(2 * GPT4O_CALL / 1e9)
    assert alice["auto"]["cost_usd"] == pytest.approx(NANO_CALL / 1e9)  # not unpriced "auto"
    assert alice["house"]["cost_usd"] is None and alice["house"]["unpriced_requests"] == 1
    assert alice["gpt-4o-ptu"]["cost_usd"] == 0 and alice["gpt-4o-ptu"]["unpriced_requests"] == 0
    totals = body["totals"]
    assert totals["all"]["cost_usd"] == pytest.approx((2 * GPT4O_CALL + NANO_CALL) / 1e9)
    assert totals["all"]["unpriced_requests"] == 1 and totals["all"]["requests"] == 5
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert body["days"][today]["alice"]["auto"] == alice["auto"]
    assert totals["days"][today] == totals["all"] and totals["keys"]["alice"] == totals["all"]
    assert body["prices_as_of"][:2] == "20"

    metrics = httpx.get(gw.url + "/metrics", timeout=5).text
    assert (
        f'aoai_gateway_cost_usd_total{{key="alice",model="gpt-4o"}} {2 * GPT4O_CALL / 1e9}'
        in metrics
    )
    assert 'aoai_gateway_unpriced_requests_total{key="alice",model="house"} 1.0' in metrics

    page = _admin(gw, "/status").text
    assert "cost (USD)" in page and f"{2 * GPT4O_CALL / 1e9:.6f}" in page and "unpriced" in page

    gw.stop()
    lines = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
    lines = [x for x in lines if x.get("path", "").endswith("/chat/completions")]
    by_model = {(x["model"], x["stream"]): x for x in lines}
    assert by_model[("gpt-4o", False)]["cost_usd"] == pytest.approx(GPT4O_CALL / 1e9)
    assert by_model[("gpt-4o", True)]["cost_usd"] == pytest.approx(GPT4O_CALL / 1e9)
    assert by_model[("auto", False)]["cost_usd"] == pytest.approx(NANO_CALL / 1e9)
    assert by_model[("house", False)]["cost_usd"] is None
    assert by_model[("house", False)]["unpriced"] is True

    # the same numbers from the store, with no server running
    report = json.loads(_cli(gw, "--format", "json", "--by", "model", "--since", today))
    assert report["rows"]["gpt-4o"]["cost_usd"] == pytest.approx(2 * GPT4O_CALL / 1e9)
    assert report["rows"]["house"]["cost_usd"] is None
    assert report["total"] == pytest.approx(totals["all"])
    rows = list(csv.DictReader(io.StringIO(_cli(gw, "--format", "csv", "--by", "day"))))
    assert [r["day"] for r in rows] == [today, "TOTAL"]
    assert float(rows[1]["cost_usd"]) == pytest.approx((2 * GPT4O_CALL + NANO_CALL) / 1e9)
    assert rows[1]["unpriced_requests"] == "1" and rows[1]["requests"] == "5"
    table = _cli(gw, "--by", "model").splitlines()
    assert table[0].split() == [
        "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "CACHED", "REASONING", "COST_USD"
    ]  # fmt: skip
    assert next(x for x in table if x.startswith("house")).endswith("unpriced")
    assert table[-1].startswith("TOTAL") and table[-1].endswith(
        f"{(2 * GPT4O_CALL + NANO_CALL) / 1e9:.6f} + 1 unpriced"
    )
    assert (
        _cli(gw, "--since", "2999-01-01").splitlines()[2] == "(no usage recorded since 2999-01-01)"
    )


def _seconds_to_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return (midnight - now).total_seconds()


def _refused(client: openai.OpenAI) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    return caught.value


def test_a_spent_budget_is_refused_and_stays_refused_after_a_restart(
    azure: Sim, start_gateway: Any, tmp_path: Path
) -> None:
    # two calls are below the budget, the third reaches it
    config = _config(azure, budget={"usd": 3 * GPT4O_CALL / 1e9, "period": "day"})
    config["state"] = {"path": str(tmp_path / "kept.db")}
    gw = start_gateway(config)
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY)  # default retries
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    upstream = azure.stats()["requests"]
    err = _refused(client)
    assert err.status_code == 429 and err.code == "insufficient_quota"
    assert err.type == "insufficient_quota"
    assert "Budget exceeded for key 'alice'" in err.message and "per day (UTC)" in err.message
    assert "resets at " + (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat() in (
        err.message
    )
    wait = int(err.response.headers["retry-after"])
    assert abs(wait - _seconds_to_midnight()) < 5
    assert err.response.headers["x-should-retry"] == "false"
    assert azure.stats()["requests"] == upstream  # nothing went upstream, no SDK retries
    # another key is not affected
    ops = openai.OpenAI(base_url=gw.base_url, api_key=ADMIN_KEY, max_retries=0)
    assert ops.chat.completions.create(model="gpt-4o", messages=HELLO).choices
    page = _admin(gw, "/status").text
    assert "<td>alice</td><td>" in page and "refusing requests" in page
    logs = gw.logs()
    assert "key 'alice' has used 80% of its budget" in logs
    assert "key 'alice' has used 100% of its budget" in logs  # 67% -> 100%: both lines

    gw.stop()
    again = start_gateway(config)  # the spend is read from the store before serving
    client = openai.OpenAI(base_url=again.base_url, api_key=GATEWAY_KEY, max_retries=0)
    assert _refused(client).code == "insufficient_quota"
    assert azure.stats()["requests"] == upstream + 1  # only ops's call


@pytest.mark.redis
@pytest.mark.slow
def test_two_gateways_on_one_redis_refuse_once_the_shared_budget_is_spent(
    azure: Sim, start_gateway: Any
) -> None:
    with private_db() as redis_url:
        # each gateway's own three calls stay below the budget: only the shared spend reaches it
        config = _config(azure, budget={"usd": 4 * GPT4O_CALL / 1e9, "period": "month"})
        config["state"] = {"redis_url": redis_url}
        one, two = start_gateway(config), start_gateway(config)
        clients = [
            openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
            for gw in (one, two)
        ]
        # six calls at once, three per gateway: all admitted below the budget, and none cut
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            calls = [
                pool.submit(clients[i % 2].chat.completions.create, model="gpt-4o", messages=HELLO)
                for i in range(6)
            ]
            assert all(c.result().choices for c in calls)
        # once the spend is shared, both gateways refuse: each read the other's spend
        deadline = time.monotonic() + 10
        refused: set[int] = set()
        admitted = 6
        while time.monotonic() < deadline and len(refused) < 2:
            for i, client in enumerate(clients):
                try:
                    client.chat.completions.create(model="gpt-4o", messages=HELLO)
                    admitted += 1  # the other's spend had not reached this gateway yet
                except openai.RateLimitError as exc:
                    assert exc.code == "insufficient_quota"
                    refused.add(i)
            time.sleep(0.2)
        assert refused == {0, 1}
        upstream = azure.stats()["requests"]
        for client in clients:
            assert _refused(client).code == "insufficient_quota"
        assert azure.stats()["requests"] == upstream

        # what one gateway reports includes the other's spend once it is flushed (~2 s)
        def spent() -> dict[str, Any]:
            totals: dict[str, Any] = _admin(two, "/admin/usage").json()["totals"]
            return totals["keys"]["alice"]

        assert wait_for(lambda: spent()["requests"] == admitted, timeout=10), spent()
        assert spent()["cost_usd"] == pytest.approx(admitted * GPT4O_CALL / 1e9)
        one.stop()  # each flushes what it still holds
        two.stop()
        # the report from Redis, with both gateways gone: every admitted call counted once
        report = json.loads(_cli(one, "--format", "json"))
        assert report["rows"]["alice"]["requests"] == admitted
        assert report["rows"]["alice"]["cost_usd"] == pytest.approx(admitted * GPT4O_CALL / 1e9)


@pytest.mark.redis
@pytest.mark.slow
def test_both_workers_of_one_serve_refuse_once_the_shared_budget_is_spent(
    azure: Sim, start_gateway: Any, tmp_path: Path
) -> None:
    with private_db() as redis_url:
        config = _config(azure, budget={"usd": 4 * GPT4O_CALL / 1e9, "period": "week"})
        config["state"] = {"redis_url": redis_url}
        gw = start_gateway(config, "--workers", "2", env={"TMPDIR": str(tmp_path)}, wait=False)
        wait_http(gw.url + "/healthz", gw.proc)
        [metrics_dir] = tmp_path.glob("aoai-gateway-metrics-*")

        def call() -> int:
            with httpx.Client(timeout=10) as client:  # a fresh connection: either worker
                r = client.post(
                    gw.base_url + "/chat/completions",
                    json={"model": "gpt-4o", "messages": HELLO},
                    headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
                )
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "insufficient_quota"
            return r.status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(lambda _: call(), range(6))) == [200] * 6
        statuses: list[int] = []
        deadline = time.monotonic() + 15
        while statuses[-10:] != [429] * 10 and time.monotonic() < deadline:
            statuses.append(call())
        assert statuses[-10:] == [429] * 10, statuses
        served = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
        assert len(served) == 2, "one worker served every request"
        gw.stop()


def test_responses_and_embeddings_are_priced_and_budgeted(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    config = base_config(sim)
    config["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY, "budget": {"usd": 1, "period": "day"}},
            {"name": "ops", "key": ADMIN_KEY, "admin": True},
        ]
    }
    config["models"] = {
        "gpt-4o": ["eastus/gpt-4o"],
        "text-embedding-3-small": ["eastus/text-embedding-3-small"],
    }
    gw = start_gateway(config)
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    plain = client.responses.create(model="gpt-4o", input="hello there")
    completed = [
        e.response
        for e in client.responses.create(model="gpt-4o", input="hello there", stream=True)
        if e.type == "response.completed"
    ]
    assert vectors.usage is not None and plain.usage is not None and completed[0].usage
    embedded = vectors.usage.prompt_tokens * 20  # text-embedding-3-small: $0.02 per 1M
    responses = sum(  # gpt-4o: $2.50 in, $10 out (built in)
        u.input_tokens * 2500 + u.output_tokens * 10_000 for u in (plain.usage, completed[0].usage)
    )
    body = _admin(gw, "/admin/usage").json()
    alice = body["keys"]["alice"]
    assert alice["text-embedding-3-small"]["cost_usd"] == pytest.approx(embedded / 1e9)
    assert alice["gpt-4o"]["requests"] == 2
    assert alice["gpt-4o"]["cost_usd"] == pytest.approx(responses / 1e9)
    assert body["totals"]["all"]["unpriced_requests"] == 0

    # the same budget check guards every operation: spend it, then each route refuses
    config["gateway"]["keys"][0]["budget"] = {"usd": (embedded + responses) / 1e9, "period": "day"}
    gw.write_config(config)
    gw.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.embeddings.create(model="text-embedding-3-small", input="x")
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            break
        time.sleep(0.2)
    else:
        pytest.fail("the embeddings route never refused the spent budget")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o", input="hello there")


def test_a_stream_the_client_left_is_priced_from_its_estimate(start_gateway: Any) -> None:
    slow = start_sim("eastus", "--deployments", "gpt-4o", "--chunk-delay", "0.3")
    try:
        gw = start_gateway(_config(slow))
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST",
                gw.base_url + "/chat/completions",
                json={"model": "gpt-4o", "messages": HELLO, "stream": True},
                headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            ) as answer,
        ):
            seen = 0
            for line in answer.iter_lines():
                seen += '"content"' in line
                if seen >= 2:
                    break  # hang up before Azure's usage chunk
        row: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not row.get("estimated_requests"):
            row = _admin(gw, "/admin/usage").json()["keys"].get("alice", {}).get("gpt-4o", {})
            time.sleep(0.2)
        assert row["estimated_requests"] == 1 and row["prompt_tokens"] > 0
        # priced like any answer: the estimate's tokens at gpt-4o's configured $5 / $20
        assert row["cost_usd"] == pytest.approx(
            (row["prompt_tokens"] * 5000 + row["completion_tokens"] * 20_000) / 1e9
        )
    finally:
        stop(slow.proc)
