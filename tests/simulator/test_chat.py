"""Tests for the simulator's chat completions (app.simulator.chat) and its shared pipeline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from app.simulator import (
    REASONING_TOKENS,
    Fault,
    SimConfig,
    Simulator,
    count_prompt_tokens,
    message_text,
    parse_args,
    split_pieces,
)
from tests.simulator.serving import serve

KEY = "sim-key-1"
V1 = "/openai/v1/chat/completions"
LEGACY = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"
AUTH = {"api-key": KEY}
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there world"},
]
UNAUTHORIZED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide"
    " a valid key for an active subscription and use a correct regional API endpoint for your"
    " resource."
)


def chat(model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def sse_events(text: str) -> list[str]:
    """Payloads of ``data:`` lines, in order."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def parse_stream(text: str) -> tuple[list[dict[str, Any]], bool]:
    """(JSON chunks, whether the stream ended with [DONE])."""
    events = sse_events(text)
    done = bool(events) and events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events if e != "[DONE]"], done


def stream_content(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["choices"] and "delta" in c["choices"][0]
    )


def assert_common_headers(r: httpx.Response, region: str = "eastus") -> None:
    assert r.headers["x-ms-region"] == region
    assert len(r.headers["apim-request-id"]) == 36
    assert len(r.headers["x-request-id"]) == 36


async def wait_for_stats(
    c: httpx.AsyncClient, key: str, value: int, timeout: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = (await c.get("/_sim/stats")).json()
        if stats[key] == value or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


# --- routes and auth -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_v1_non_stream_completion_shape(client: httpx.AsyncClient) -> None:
    r = await client.post(V1, headers=AUTH, json=chat())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert_common_headers(r)
    assert int(r.headers["x-ratelimit-remaining-requests"]) > 0
    assert int(r.headers["x-ratelimit-remaining-tokens"]) > 0
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-2024-11-20"
    assert body["id"].startswith("chatcmpl-")
    assert body["system_fingerprint"].startswith("fp_")
    assert isinstance(body["created"], int)
    pf = body["prompt_filter_results"][0]
    assert pf["prompt_index"] == 0
    assert pf["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["content_filter_results"]["violence"]["filtered"] is False
    assert choice["message"] == {
        "annotations": [],
        "content": "You said: hello there world",
        "refusal": None,
        "role": "assistant",
    }
    # prompt: (2 words + 3) + (3 words + 3); completion: 5 words
    assert body["usage"] == {
        "completion_tokens": 5,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens": 11,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        "total_tokens": 16,
    }


@pytest.mark.anyio
async def test_legacy_form_uses_path_deployment(client: httpx.AsyncClient) -> None:
    r = await client.post(LEGACY.format("gpt-4o-mini"), headers=AUTH, json=chat("ignored"))
    assert r.status_code == 200
    assert r.json()["model"] == "gpt-4o-mini-2024-07-18"


@pytest.mark.anyio
async def test_legacy_form_requires_api_version(client: httpx.AsyncClient) -> None:
    r = await client.post("/openai/deployments/gpt-4o/chat/completions", headers=AUTH, json=chat())
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert_common_headers(r)


@pytest.mark.anyio
async def test_bearer_auth(client: httpx.AsyncClient) -> None:
    r = await client.post(V1, headers={"Authorization": "Bearer sim-key-2"}, json=chat())
    assert r.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{}, {"api-key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}],
)
async def test_bad_key_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.post(V1, headers=headers, json=chat())
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "401", "message": UNAUTHORIZED}}
    assert r.headers["content-type"] == "application/json"
    assert_common_headers(r)
    assert "x-ratelimit-remaining-requests" not in r.headers


@pytest.mark.anyio
async def test_revoked_key_401(client: httpx.AsyncClient, sim: Simulator) -> None:
    assert (await client.post("/_sim/revoke", json={"key": KEY})).status_code == 204
    assert (await client.post(V1, headers=AUTH, json=chat())).status_code == 401
    bearer = {"Authorization": "Bearer sim-key-2"}
    assert (await client.post(V1, headers=bearer, json=chat())).status_code == 200
    sim.revoke_key("sim-key-2")
    assert (await client.post(V1, headers=bearer, json=chat())).status_code == 401


@pytest.mark.anyio
async def test_deployment_not_found_both_forms(client: httpx.AsyncClient) -> None:
    for r in (
        await client.post(V1, headers=AUTH, json=chat("gpt-9")),
        await client.post(LEGACY.format("gpt-9"), headers=AUTH, json=chat()),
    ):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "DeploymentNotFound"
        assert r.json()["error"]["message"].startswith("The API deployment for this resource")


@pytest.mark.anyio
async def test_auth_checked_before_deployment(client: httpx.AsyncClient) -> None:
    r = await client.post(LEGACY.format("gpt-9"), json=chat())
    assert r.status_code == 401


@pytest.mark.anyio
async def test_unknown_path_and_healthz(client: httpx.AsyncClient) -> None:
    r = await client.post("/openai/v1/no-such-operation", headers=AUTH, json={})
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "param"),
    [(b"{not json", None), (b'{"model":"gpt-4o"}', "messages"), (b"[1]", None)],
)
async def test_invalid_body_400(
    client: httpx.AsyncClient, content: bytes, param: str | None
) -> None:
    r = await client.post(V1, headers={**AUTH, "content-type": "application/json"}, content=content)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"]


@pytest.mark.anyio
async def test_empty_messages_400(client: httpx.AsyncClient) -> None:
    r = await client.post(V1, headers=AUTH, json={"model": "gpt-4o", "messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_large_body_accepted(client: httpx.AsyncClient) -> None:
    big = "x" * (20 * 1024 * 1024)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": big}]}
    r = await client.post(V1, headers=AUTH, json=body)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == ("You said: " + big)[:200]


# --- reply and usage -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reasoning_unsupported_parameter(client: httpx.AsyncClient) -> None:
    r = await client.post(V1, headers=AUTH, json=chat("o3-mini", max_tokens=10))
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model."
            " Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    }
    r = await client.post(V1, headers=AUTH, json=chat("o3-mini", temperature=0.2))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "temperature"
    assert err["message"] == (
        "Unsupported parameter: 'temperature' is not supported with this model."
    )
    # a "-chat" gpt-5 deployment is not a reasoning deployment
    r = await client.post(V1, headers=AUTH, json=chat("gpt-5.2-chat", temperature=0.2))
    assert r.status_code == 200


@pytest.mark.anyio
async def test_reasoning_usage_has_reasoning_tokens(client: httpx.AsyncClient) -> None:
    r = await client.post(V1, headers=AUTH, json=chat("o3-mini", max_completion_tokens=100))
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == REASONING_TOKENS > 0
    assert usage["completion_tokens"] == 5 + REASONING_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.anyio
async def test_content_parts_and_max_tokens_cap(client: httpx.AsyncClient) -> None:
    parts = [
        {"type": "text", "text": "one two"},
        {"type": "image_url"},
        {"type": "text", "text": "3"},
    ]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}
    r = await client.post(V1, headers=AUTH, json=body)
    assert r.json()["choices"][0]["message"]["content"] == "You said: one two 3"
    assert r.json()["usage"]["prompt_tokens"] == 3 + 3
    r = await client.post(V1, headers=AUTH, json={**body, "max_tokens": 3})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "You said: one"
    assert choice["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3


@pytest.mark.anyio
async def test_fixed_reply_and_region() -> None:
    sim = Simulator(SimConfig(reply="fixed answer here", region="westeurope"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://s") as c:
        r = await c.post(V1, headers=AUTH, json=chat())
    assert r.json()["choices"][0]["message"]["content"] == "fixed answer here"
    assert r.json()["usage"]["completion_tokens"] == 3
    assert_common_headers(r, "westeurope")


def test_pure_helpers() -> None:
    assert message_text([{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}]) == "a b c"
    assert message_text(None) == ""
    assert count_prompt_tokens([{"content": "a b"}, {"content": ""}]) == 8
    assert count_prompt_tokens([]) == 1
    text = "You said: something longer than eight characters"
    pieces = split_pieces(text, 8)
    assert len(pieces) == 8
    assert "".join(pieces) == text
    assert split_pieces("ab", 8) == ["a", "b"]


def test_cli_args() -> None:
    host, port, config = parse_args(
        ["--port", "9100", "--keys", "k1,k2", "--deployments", "a,b", "--chunk-delay", "0.1"]
    )
    assert (host, port) == ("127.0.0.1", 9100)
    assert config.keys == ["k1", "k2"]
    assert config.deployments == ["a", "b"]
    assert config.chunk_delay == 0.1
    assert config.chunks == 8


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_shape_without_usage(client: httpx.AsyncClient) -> None:
    plain = (await client.post(V1, headers=AUTH, json=chat())).json()
    r = await client.post(V1, headers=AUTH, json=chat(stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert_common_headers(r)
    assert r.text.endswith("data: [DONE]\n\n")
    chunks, done = parse_stream(r.text)
    assert done
    first, role, *content, final = chunks
    assert first["choices"] == []
    assert first["prompt_filter_results"][0]["prompt_index"] == 0
    assert first["id"] == "" and first["object"] == ""
    assert role["choices"][0]["delta"] == {"content": "", "refusal": None, "role": "assistant"}
    assert role["object"] == "chat.completion.chunk"
    assert role["model"] == "gpt-4o-2024-11-20"
    assert len(content) == 8
    for c in content:
        assert c["id"] == role["id"]
        assert c["choices"][0]["finish_reason"] is None
        assert c["choices"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] == "stop"
    assert stream_content(chunks) == plain["choices"][0]["message"]["content"]
    assert all("usage" not in c for c in chunks)


@pytest.mark.anyio
async def test_stream_include_usage(client: httpx.AsyncClient) -> None:
    plain = (await client.post(V1, headers=AUTH, json=chat())).json()
    body = chat(stream=True, stream_options={"include_usage": True})
    chunks, done = parse_stream((await client.post(V1, headers=AUTH, json=body)).text)
    assert done
    *earlier, last = chunks
    assert last["choices"] == []
    assert last["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in earlier)
    assert earlier[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.anyio
async def test_stream_finish_length(client: httpx.AsyncClient) -> None:
    body = chat(stream=True, max_tokens=2)
    chunks, _ = parse_stream((await client.post(V1, headers=AUTH, json=body)).text)
    assert stream_content(chunks) == "You said:"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fault_429_with_retry_after_ms(client: httpx.AsyncClient) -> None:
    fault = {"mode": "429", "retry_after_ms": 1500}
    assert (await client.post("/_sim/faults", json=fault)).status_code == 204
    r = await client.post(V1, headers=AUTH, json=chat())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert r.headers["retry-after-ms"] == "1500"
    assert r.headers["x-ms-retry-after-ms"] == "1500"
    assert_common_headers(r)
    err = r.json()["error"]
    assert err["code"] == "429"
    assert err["message"].endswith("Please retry after 2 seconds.")


@pytest.mark.anyio
async def test_fault_429_with_retry_after_seconds(
    client: httpx.AsyncClient, sim: Simulator
) -> None:
    sim.add_fault(Fault("429", retry_after=3.2))
    r = await client.post(V1, headers=AUTH, json=chat())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "4"
    assert "retry-after-ms" not in r.headers
    assert "x-ms-retry-after-ms" not in r.headers


@pytest.mark.anyio
async def test_fault_500(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault("500"))
    r = await client.post(V1, headers=AUTH, json=chat(stream=True))
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "code": "InternalServerError",
            "message": "The server had an error while processing your request. Sorry about that!",
        }
    }


@pytest.mark.anyio
async def test_fault_content_filter(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault("content_filter"))
    r = await client.post(V1, headers=AUTH, json=chat())
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "content_filter"
    assert err["param"] == "prompt"
    assert err["status"] == 400
    assert err["message"].startswith("The response was filtered due to the prompt triggering")
    inner = err["innererror"]
    assert inner["code"] == "ResponsibleAIPolicyViolation"
    assert inner["content_filter_result"]["hate"] == {"filtered": True, "severity": "high"}


@pytest.mark.anyio
async def test_fault_annotations(client: httpx.AsyncClient, sim: Simulator) -> None:
    plain = (await client.post(V1, headers=AUTH, json=chat())).json()
    sim.add_fault(Fault("annotations"))
    chunks, done = parse_stream((await client.post(V1, headers=AUTH, json=chat(stream=True))).text)
    assert done
    notes = [c for c in chunks if c["choices"] and "content_filter_offsets" in c["choices"][0]]
    assert len(notes) == 8
    for note in notes:
        choice = note["choices"][0]
        assert "delta" not in choice
        assert note["id"] == "" and note["object"] == ""
        assert choice["content_filter_results"]["hate"]["filtered"] is False
    reply = plain["choices"][0]["message"]["content"]
    assert notes[-1]["choices"][0]["content_filter_offsets"]["end_offset"] == len(reply)
    assert stream_content(chunks) == reply
    # each annotation directly follows a content chunk
    for i, c in enumerate(chunks):
        if c in notes:
            assert chunks[i - 1]["choices"][0]["delta"].get("content")


@pytest.mark.anyio
async def test_fault_slow_and_latency(sim: Simulator) -> None:
    sim.add_fault(Fault("slow", delay=0.3, count=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://s") as c:
        start = time.monotonic()
        assert (await c.post(V1, headers=AUTH, json=chat())).status_code == 200
        assert time.monotonic() - start >= 0.3
        start = time.monotonic()
        assert (await c.post(V1, headers=AUTH, json=chat())).status_code == 200
        assert time.monotonic() - start < 0.3
    slow = Simulator(SimConfig(latency=0.2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=slow), base_url="http://s") as c:
        start = time.monotonic()
        assert (await c.post(V1, headers=AUTH, json=chat())).status_code == 200
        assert time.monotonic() - start >= 0.2


@pytest.mark.anyio
async def test_fault_count_and_deployment_scope(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault("429", deployment="gpt-4o", count=2))
    sim.add_fault(Fault("500", count=1))
    mini = await client.post(V1, headers=AUTH, json=chat("gpt-4o-mini"))
    assert mini.status_code == 500  # the 429 fault is scoped to gpt-4o
    codes = [(await client.post(V1, headers=AUTH, json=chat())).status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    assert sim.faults == []
    assert (await client.post(V1, headers=AUTH, json=chat("gpt-4o-mini"))).status_code == 200


@pytest.mark.anyio
async def test_add_fault_copies_and_validates(client: httpx.AsyncClient, sim: Simulator) -> None:
    fault = Fault("500", count=1)
    sim.add_fault(fault)
    await client.post(V1, headers=AUTH, json=chat())
    assert fault.count == 1
    with pytest.raises(ValueError):
        Fault("teapot")
    for bad in ({"mode": "teapot"}, {"mode": "429", "bogus": 1}, {"mode": "429", "count": "x"}):
        r = await client.post("/_sim/faults", json=bad)
        assert r.status_code == 400
    assert sim.faults == []


@pytest.mark.anyio
async def test_faults_apply_after_auth_and_deployment(
    client: httpx.AsyncClient, sim: Simulator
) -> None:
    sim.add_fault(Fault("500", count=1))
    assert (await client.post(V1, json=chat())).status_code == 401
    assert (await client.post(V1, headers=AUTH, json=chat("gpt-9"))).status_code == 404
    assert (await client.post(V1, headers=AUTH, json=chat())).status_code == 500


# --- stats, recording, reset -----------------------------------------------------------------


@pytest.mark.anyio
async def test_stats_and_recorded_requests(client: httpx.AsyncClient) -> None:
    await client.post(V1, headers=AUTH, json=chat())
    await client.post(LEGACY.format("o3-mini"), headers={"Api-Key": "sim-key-2"}, json=chat())
    await client.post(V1, headers={"api-key": "bad"}, json=chat())
    stats = (await client.get("/_sim/stats")).json()
    assert stats == {
        "requests": 3,
        "by_status": {"200": 2, "401": 1},
        "by_deployment": {"gpt-4o": 1, "o3-mini": 1},
        "by_key": {"sim-\u2026": 2},
        "in_flight": 0,
        "disconnects": 0,
    }
    recorded = (await client.get("/_sim/requests")).json()
    assert [r["path"] for r in recorded] == [
        V1,
        "/openai/deployments/o3-mini/chat/completions",
        V1,
    ]
    assert recorded[1]["query"] == "api-version=2024-10-21"
    assert recorded[1]["headers"]["api-key"] == "sim-key-2"
    assert recorded[0]["body"] == chat()


@pytest.mark.anyio
async def test_recorded_requests_keep_last_100(client: httpx.AsyncClient) -> None:
    for i in range(105):
        await client.post(V1, headers=AUTH, content=b"{bad %d" % i)
    recorded = (await client.get("/_sim/requests")).json()
    assert len(recorded) == 100
    assert recorded[-1]["body"] is None
    assert recorded[-1]["headers"]["content-length"] == str(len(b"{bad 104"))


@pytest.mark.anyio
async def test_reset_clears_state(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault("500"))
    sim.revoke_key(KEY)
    await client.post(V1, headers=AUTH, json=chat())
    assert (await client.post("/_sim/reset")).status_code == 204
    assert sim.faults == []
    assert (await client.get("/_sim/requests")).json() == []
    assert (await client.get("/_sim/stats")).json()["requests"] == 0
    assert (await client.post(V1, headers=AUTH, json=chat())).status_code == 200


# --- real server: hang, drop, disconnects ----------------------------------------------------


@pytest.mark.anyio
async def test_hang_until_client_gives_up() -> None:
    sim = Simulator()
    sim.add_fault(Fault("hang"))
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(V1, headers=AUTH, json=chat(), timeout=0.5)
            stats = await wait_for_stats(c, "disconnects", 1)
            assert stats["disconnects"] == 1
            assert stats["in_flight"] == 0
            assert stats["by_status"] == {}


@pytest.mark.anyio
@pytest.mark.parametrize(("after_chunks", "sent"), [(3, 3), (0, 0), (20, 8)])
async def test_drop_stream_ends_without_done(after_chunks: int, sent: int) -> None:
    sim = Simulator()
    sim.add_fault(Fault("drop", after_chunks=after_chunks, count=1))
    lines: list[str] = []
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                async with c.stream("POST", V1, headers=AUTH, json=chat(stream=True)) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        lines.append(line)
            # the fault was used up: the next stream is whole
            whole = await c.post(V1, headers=AUTH, json=chat(stream=True))
    chunks, done = parse_stream("\n".join(lines))
    assert not done
    assert chunks[0]["choices"] == []
    assert len(chunks) == 2 + sent
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[1:])
    assert parse_stream(whole.text)[1]


@pytest.mark.anyio
async def test_drop_non_stream_cuts_body() -> None:
    sim = Simulator()
    sim.add_fault(Fault("drop"))
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(V1, headers=AUTH, json=chat())


@pytest.mark.anyio
async def test_client_leaving_mid_stream_counts_disconnect() -> None:
    sim = Simulator(SimConfig(chunk_delay=0.2))
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            async with c.stream("POST", V1, headers=AUTH, json=chat(stream=True)) as r:
                async for line in r.aiter_lines():
                    if '"content":"' in line and '"role"' not in line:
                        break  # leave after the first content chunk
            stats = await wait_for_stats(c, "disconnects", 1)
            assert stats["disconnects"] == 1
            assert stats["in_flight"] == 0


@pytest.mark.anyio
async def test_real_server_stream_arrives_incrementally() -> None:
    sim = Simulator(SimConfig(chunk_delay=0.05, chunks=4))
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            arrivals: list[float] = []
            async with c.stream("POST", V1, headers=AUTH, json=chat(stream=True)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        arrivals.append(time.monotonic())
    assert len(arrivals) == 2 + 4 + 1 + 1
    assert arrivals[-1] - arrivals[0] >= 0.15
