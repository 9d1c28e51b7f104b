"""Per-key rpm and tpm through the real gateway: refused before anything goes upstream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, Sim, base_config, start_sim, stop

BOB = "test-gateway-key-bob"
OPS = "test-gateway-key-ops"
HELLO = [{"role": "user", "content": "hello there"}]  # 5 prompt + 4 completion tokens


def _config(sim: Any, **alice: Any) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"] = {
        "keys": [{"name": "alice", "key": GATEWAY_KEY, **alice}, {"name": "bob", "key": BOB}]
    }
    return config


def _chat(gw: Any, key: str = GATEWAY_KEY, timeout_s: float = 10, **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout_s,
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


# --- tpm under hang-ups and concurrency (issue 10) -----------------------------------


@pytest.fixture(scope="module")
def paced() -> Iterator[Sim]:
    """A region streaming its 8 chunks 0.1 s apart: streams overlap and can be left."""
    s = start_sim("paced", "--chunk-delay", "0.1")
    yield s
    stop(s.proc)


def _paced_config(sim: Any, paced: Sim, **alice: Any) -> dict[str, Any]:
    config = _config(sim, **alice)
    config["gateway"]["keys"].append({"name": "ops", "key": OPS, "admin": True})
    config["resources"]["paced"] = {"endpoint": paced.url, "keys": ["sim-key-1"]}
    config["models"]["gpt-4o"] = ["paced/gpt-4o"]
    return config


def _leave_stream_early(gw: Any, chunks: int = 3) -> int:
    """Start a stream, read `chunks` content chunks, hang up; the status it got."""
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    ) as resp:
        if resp.status_code != 200:
            return resp.status_code
        seen = 0
        for line in resp.iter_lines():
            if '"content"' in line:
                seen += 1
                if seen == chunks:
                    break
    return 200


def test_streams_the_client_left_before_the_usage_chunk_count_estimated_tokens(
    sim: Any, paced: Sim, start_gateway: Any
) -> None:
    """Issue 10: closing each stream just before its end gave answers with no usage
    recorded, and `tpm` never refused. Now what is known is counted - the prompt's
    estimate and the chunks relayed - marked estimated."""
    paced.reset()
    gw = start_gateway(_paced_config(sim, paced, tpm=50))
    statuses = []
    for _ in range(8):
        statuses.append(_leave_stream_early(gw))
        time.sleep(0.3)  # the hang-up is noticed and the tokens settled
    assert 429 in statuses, statuses  # the estimates filled the window
    left = statuses.index(429)
    assert 2 <= left <= 6 and statuses[:left] == [200] * left, statuses
    assert paced.stats()["requests"] == left  # refused ones never went upstream
    usage = httpx.get(gw.url + "/admin/usage", headers={"api-key": OPS}, timeout=5).json()
    row = usage["keys"]["alice"]["gpt-4o"]
    assert row["requests"] == left and row["estimated_requests"] == left
    assert row["prompt_tokens"] >= 5 * left and row["completion_tokens"] >= 3 * left
    lines = [json.loads(ln) for ln in gw.logs().splitlines() if ln.startswith('{"')]
    chats = [ln for ln in lines if ln.get("status") == 499]
    assert len(chats) == left
    assert all(ln["estimated"] is True and ln["tokens"]["prompt_tokens"] > 0 for ln in chats)


@pytest.mark.anyio
async def test_concurrent_streams_cannot_overshoot_tpm_by_more_than_one_estimate(
    sim: Any, paced: Sim, start_gateway: Any
) -> None:
    """Issue 10: 30 parallel streams on `tpm: 50` were all admitted (none had finished,
    so the window was empty). Admission now reserves each request's estimate."""
    paced.reset()
    gw = start_gateway(_paced_config(sim, paced, tpm=50))
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=30
    ) as client:

        async def one() -> int:
            body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
            r = await client.post(gw.base_url + "/chat/completions", json=body)
            return r.status_code

        statuses = await asyncio.gather(*(one() for _ in range(30)))
    admitted = statuses.count(200)
    assert statuses.count(429) == 30 - admitted
    # each reserves ~10 tokens (no max_tokens): the window fills after about 5
    assert 2 <= admitted <= 6, statuses
    assert paced.stats()["requests"] == admitted


@pytest.mark.anyio
async def test_max_tokens_is_reserved_until_the_answer_settles_it(
    sim: Any, paced: Sim, start_gateway: Any
) -> None:
    paced.reset()
    gw = start_gateway(_paced_config(sim, paced, tpm=100))
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=30
    ) as client:
        url = gw.base_url + "/chat/completions"
        body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
        # may answer with up to 200 tokens: admitted (the window is empty), ~210 reserved
        first = asyncio.ensure_future(client.post(url, json={**body, "max_tokens": 200}))
        while paced.stats()["in_flight"] == 0:
            await asyncio.sleep(0.02)
        refused = await client.post(url, json=body)
        assert refused.status_code == 429  # the reservation holds the window meanwhile
        assert (await first).status_code == 200
        await asyncio.sleep(0.3)  # settled: it used 9 tokens, the window holds 9
        assert (await client.post(url, json=body)).status_code == 200


def test_a_responses_stream_left_early_is_recorded_estimated_too(
    sim: Any, paced: Sim, start_gateway: Any
) -> None:
    """The estimate lives on the generic path: the Responses API's streams count too."""
    paced.reset()
    gw = start_gateway(_paced_config(sim, paced, tpm=1000))
    with httpx.stream(
        "POST",
        gw.base_url + "/responses",
        json={"model": "gpt-4o", "input": "hello there " * 20, "stream": True},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    ) as resp:
        assert resp.status_code == 200
        deltas = 0
        for line in resp.iter_lines():
            deltas += "output_text.delta" in line and line.startswith("data:")
            if deltas == 3:
                break
    time.sleep(0.5)
    usage = httpx.get(gw.url + "/admin/usage", headers={"api-key": OPS}, timeout=5).json()
    row = usage["keys"]["alice"]["gpt-4o"]
    assert row["requests"] == 1 and row["estimated_requests"] == 1
    assert row["prompt_tokens"] >= 60  # 240 characters of input
    assert row["completion_tokens"] >= 3


def test_a_plain_request_left_while_waiting_counts_its_prompt_estimated(
    sim: Any, paced: Sim, start_gateway: Any
) -> None:
    paced.reset()
    paced.fault("slow", count=1, delay=5)
    gw = start_gateway(_paced_config(sim, paced, tpm=1000))
    with pytest.raises(httpx.ReadTimeout):
        _chat(gw, timeout_s=0.5)
    time.sleep(0.5)
    usage = httpx.get(gw.url + "/admin/usage", headers={"api-key": OPS}, timeout=5).json()
    row = usage["keys"]["alice"]["gpt-4o"]
    assert (row["requests"], row["estimated_requests"], row["completion_tokens"]) == (1, 1, 0)
    assert row["prompt_tokens"] > 0
