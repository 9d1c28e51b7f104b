"""The foundation end to end: the real server, the real openai SDK, both URL forms."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, base_config


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
