"""The foundation end to end: the real server, the real openai SDK, both URL forms."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, base_config, start_sim, stop


def test_chat_plain_and_stream_through_both_url_forms(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)

    # gpt-4o prefers sweden (legacy form); gpt-4o-mini lives on eastus (v1 form)
    for model, region in (("gpt-4o", "sweden"), ("gpt-4o-mini", "eastus")):
        done = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello gateway"}]
        )
        assert done.choices[0].message.content == "You said: hello gateway"
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello gateway"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "You said: hello gateway"
        last = sim[region].requests()[-1]
        if region == "sweden":
            assert last["path"] == "/openai/deployments/gpt-4o/chat/completions"
            assert "api-version=2024-10-21" in last["query"]
        else:
            assert last["path"] == "/openai/v1/chat/completions"
            assert last["body"]["model"] == "gpt-4o-mini"
        assert "authorization" not in last["headers"]
        assert last["headers"]["api-key"] == "sim-key-1"


def test_key1_revoked_every_request_succeeds_via_key2(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    sim["sweden"].revoke("sim-key-1")
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    for _ in range(5):
        done = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content == "You said: hi"
    stats = sim["sweden"].stats()
    # key1 was tried once, then remembered as rejected: 1 x 401 + 5 x 200
    assert stats["by_status"] == {"401": 1, "200": 5}
    assert sim["eastus"].stats()["requests"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_gateway_key_is_401(sim: Any, start_gateway: Any, stream: bool) -> None:
    gw = start_gateway(base_config(sim))
    client = openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    assert info.value.status_code == 401
    assert "wrong" not in gw.logs()


def test_stream_reaches_the_client_while_azure_is_still_generating(start_gateway: Any) -> None:
    slow = start_sim("slow", "--chunks", "6", "--chunk-delay", "0.4")
    try:
        config = base_config({"eastus": slow, "sweden": slow})
        gw = start_gateway(config)
        client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
        with client:
            started = time.monotonic()
            arrivals = []
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "one two"}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic() - started)
        # 6 pieces 0.4 s apart: the first must arrive well before the last was generated
        assert len(arrivals) >= 4
        assert arrivals[-1] - arrivals[0] >= 1.2
        assert arrivals[0] < arrivals[-1] - 1.0
    finally:
        stop(slow.proc)


def sse_events(resp: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for block in resp.text.split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            events.append(json.loads(block[len("data: ") :]))
    return events


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini"])
def test_azure_stream_quirks_are_hidden_and_usage_sent_only_when_asked(
    sim: Any, start_gateway: Any, model: str
) -> None:
    gw = start_gateway(base_config(sim))
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "count the chunks"}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    plain = httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/event-stream")
    assert plain.text.endswith("data: [DONE]\n\n")
    events = sse_events(plain)
    # no prompt-filter-only first chunk, no usage chunk the client did not ask for
    assert events and all(e["choices"] for e in events)
    assert not any(e.get("usage") for e in events)
    assert "prompt_filter_results" not in plain.text
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == "You said: count the chunks"

    body["stream_options"] = {"include_usage": True}
    asked = httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30)
    events = sse_events(asked)
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 5  # "You said: count the chunks"
    assert events[-1]["usage"]["prompt_tokens"] == 3 + 3
    assert all(e["choices"] for e in events[:-1])
    # the gateway asked Azure for usage both times, to count tokens itself
    region = "sweden" if model == "gpt-4o" else "eastus"
    for request in sim[region].requests():
        assert request["body"]["stream_options"]["include_usage"] is True


def test_reasoning_parameters_are_translated(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    with openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0) as client:
        done = client.chat.completions.create(
            model="o3-mini",
            messages=[{"role": "user", "content": "a b c d e f"}],
            max_tokens=3,
            temperature=0.2,
            top_p=0.5,
        )
    assert done.choices[0].finish_reason == "length"
    sent = sim["eastus"].requests()[-1]["body"]
    assert sent["model"] == "o3-mini"
    assert sent["max_completion_tokens"] == 3
    for name in ("max_tokens", "temperature", "top_p"):
        assert name not in sent


@pytest.mark.parametrize("region", ["sweden", "eastus"])
def test_key1_revoked_streams_succeed_via_key2(sim: Any, start_gateway: Any, region: str) -> None:
    gw = start_gateway(base_config(sim))
    sim[region].revoke("sim-key-1")
    model = "gpt-4o" if region == "sweden" else "gpt-4o-mini"
    with openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0) as client:
        for _ in range(3):
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "You said: hi"
    stats = sim[region].stats()
    assert stats["by_status"] == {"401": 1, "200": 3}
    gw.stop()
    assert "sim-key-1" not in gw.logs() and "sim-key-2" not in gw.logs()
