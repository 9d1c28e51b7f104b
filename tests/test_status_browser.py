"""`GET /status` rendered by a real browser (headless Chromium), and who may see it."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.browser import browse
from tests.conftest import GATEWAY_KEY, ROOT, base_config

ARTIFACTS = ROOT / "tests" / "artifacts"
ADMIN_KEY = "test-gateway-key-ops"


def test_status_page_renders_health_usage_and_chart_in_chromium(
    sim: Any, start_gateway: Any, tmp_path: Path
) -> None:
    config = base_config(sim, gateway={})  # open mode: loopback only, no key needed
    gw = start_gateway(config, key=None)
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": "status please"}]
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=ask)  # served by sweden
    sim["eastus"].revoke("sim-key-1")
    sim["sweden"].fault("500")
    for _ in range(2):  # sweden fails and cools down; eastus key1 is rejected, key2 serves
        done = client.chat.completions.create(model="gpt-4o", messages=ask)
        assert done.choices[0].message.content == "You said: status please"
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=ask, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    dom = browse(gw.url + "/status", tmp_path / "profile-dom", "--dump-dom").stdout
    assert "<title>aoai-gateway status</title>" in dom
    # models -> deployments, with health
    sweden_row = dom[dom.index("<b>sweden</b> / gpt-4o") :].split("</tr>")[0]
    assert "cooling down until" in sweden_row
    assert "HTTP 500" in sweden_row  # last error
    eastus_row = dom[dom.index("<b>eastus</b> / gpt-4o<") :].split("</tr>")[0]
    assert "key1 rejected" in eastus_row
    assert "healthy" in eastus_row
    assert " ms</td>" in eastus_row  # p50 latency
    # usage today, per key
    usage = dom[dom.index('id="usage"') :]
    assert "<td>anonymous</td><td>gpt-4o</td>" in usage
    assert "<td>anonymous</td><td>gpt-4o-mini</td>" in usage
    # the requests-per-minute chart: its bars hold the 6 requests
    assert '<svg class="chart"' in dom
    bars = [tuple(map(int, m)) for m in re.findall(r"(\d+) requests, (\d+) failed", dom)]
    assert len(bars) == 30 and sum(r for r, _ in bars) == 6 and sum(f for _, f in bars) == 0
    assert "sim-key-1" not in dom and "sim-key-2" not in dom

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status.png"
    shot.unlink(missing_ok=True)
    browse(
        gw.url + "/status",
        tmp_path / "profile-shot",
        "--window-size=1280,1000",
        f"--screenshot={shot}",
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    print(f"\nstatus page screenshot: {shot}")


def test_status_page_is_for_admin_keys_when_keys_are_configured(
    sim: Any, start_gateway: Any
) -> None:
    config = base_config(
        sim,
        gateway={
            "keys": [
                {"name": "alice", "key": GATEWAY_KEY},
                {"name": "ops", "key": ADMIN_KEY, "admin": True},
            ]
        },
    )
    gw = start_gateway(config)
    url = gw.url + "/status"

    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
    assert anonymous.headers["www-authenticate"].startswith("Basic ")  # a browser asks for it

    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401

    user = httpx.get(url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
    assert user.status_code == 403
    assert user.json()["error"]["code"] == "permission_denied"

    for headers in (
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        {"api-key": ADMIN_KEY},
        {"Authorization": "Basic " + base64.b64encode(f"ops:{ADMIN_KEY}".encode()).decode()},
    ):
        ok = httpx.get(url, headers=headers)
        assert ok.status_code == 200, headers
        assert ok.headers["content-type"].startswith("text/html")
        assert "gpt-4o-mini" in ok.text
        assert ADMIN_KEY not in ok.text and GATEWAY_KEY not in ok.text

    basic_user = "Basic " + base64.b64encode(f"x:{GATEWAY_KEY}".encode()).decode()
    assert httpx.get(url, headers={"Authorization": basic_user}).status_code == 403
    assert ADMIN_KEY not in gw.logs()
