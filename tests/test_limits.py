"""Per-key rpm and tpm through the real gateway: refused before anything goes upstream."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, base_config

BOB = "test-gateway-key-bob"
HELLO = [{"role": "user", "content": "hello there"}]  # 5 prompt + 4 completion tokens


def _config(sim: Any, **alice: Any) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"] = {
        "keys": [{"name": "alice", "key": GATEWAY_KEY, **alice}, {"name": "bob", "key": BOB}]
    }
    return config


def _chat(gw: Any, key: str = GATEWAY_KEY, **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def _assert_refused(resp: httpx.Response, low: int, high: int) -> None:
    assert resp.status_code == 429, resp.text
    error = resp.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "alice" in error["message"]
    assert low <= int(resp.headers["retry-after"]) <= high
    assert int(resp.headers["retry-after-ms"]) <= high * 1000


def test_rpm_refuses_the_extra_request_without_calling_azure(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(_config(sim, rpm=2))
    assert _chat(gw).status_code == 200
    assert _chat(gw, stream=True).status_code == 200
    refused = _chat(gw)
    _assert_refused(refused, 55, 60)
    assert "(rpm 2)" in refused.json()["error"]["message"]  # only the limits that are set
    _assert_refused(_chat(gw, stream=True), 55, 60)  # a stream is refused before it starts
    assert sim["sweden"].stats()["requests"] == 2
    assert sim["eastus"].stats()["requests"] == 0
    # bob has no limit and is not held back by alice's
    assert [_chat(gw, BOB).status_code for _ in range(4)] == [200] * 4
    # the SDK sees OpenAI's own error type
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "rate_limit_exceeded"
    assert sim["sweden"].stats()["requests"] == 6


def test_tpm_counts_real_tokens_of_plain_and_streamed_answers(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(_config(sim, tpm=20))
    assert _chat(gw).status_code == 200  # 9 tokens
    assert _chat(gw, stream=True).status_code == 200  # 9 more, from the usage chunk
    time.sleep(0.2)  # tokens are counted just after the response
    assert _chat(gw).status_code == 200  # 18 < 20: admitted, now 27
    time.sleep(0.2)
    _assert_refused(_chat(gw), 55, 61)  # the window holds >= tpm tokens
    assert sim["sweden"].stats()["requests"] == 3
    assert _chat(gw, BOB).status_code == 200


def test_rpm_and_tpm_together_refuse_on_whichever_is_reached(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(_config(sim, rpm=100, tpm=9))
    assert _chat(gw).status_code == 200
    time.sleep(0.2)
    _assert_refused(_chat(gw), 55, 61)
    assert sim["sweden"].stats()["requests"] == 1
