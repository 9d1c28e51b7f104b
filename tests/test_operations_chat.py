"""app/operations/chat.py: chat URLs per resource form, the body rewrite, the wire request."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import orjson
import pytest
import respx

from app import azure
from app.config import parse
from app.operations import Place
from app.operations.chat import CHAT, REASONING_UNSUPPORTED, chat_url, rewrite_body
from app.routing import build_table
from app.upstream import HttpxUpstream, Timeouts

LEGACY_DEFAULT = """
resources:
  r: {endpoint: "https://x.openai.azure.com", keys: [k], api: legacy}
models:
  m: [r/d]
"""


def place(api: str, deployment: str, version: str) -> Place:
    return Place("https://x.openai.azure.com", api, deployment, version, "2025-04-01-preview")


# --- URLs -----------------------------------------------------------------------


def test_chat_url_v1_ignores_deployment_and_version() -> None:
    url = chat_url(place("v1", "gpt4o-prod", "2024-06-01"))
    assert url == "https://x.openai.azure.com/openai/v1/chat/completions"


def test_chat_url_legacy() -> None:
    url = chat_url(place("legacy", "gpt4o-prod", "2025-01-01"))
    assert url == (
        "https://x.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2025-01-01"
    )


def test_chat_url_legacy_default_version() -> None:
    (target,) = build_table(parse(LEGACY_DEFAULT, {}))["m"]
    assert target.urls["chat"].endswith(
        "/openai/deployments/d/chat/completions?api-version=2024-10-21"
    )
    assert azure.LEGACY_API_VERSION == "2024-10-21"


# --- body rewrite -------------------------------------------------------------------

REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 50,
    "temperature": 0.2,
    "top_p": 0.9,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "user": "u1",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
}


def rewrite(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    args = {"deployment": "dep", "reasoning": False, "want_usage": False, **kw}
    out = rewrite_body(body, **args)
    assert isinstance(out, bytes)
    parsed: dict[str, Any] = orjson.loads(out)
    return parsed


def test_model_becomes_the_deployment_and_the_rest_is_kept() -> None:
    out = rewrite(REQUEST, deployment="gpt4o-prod")
    assert out == {**REQUEST, "model": "gpt4o-prod"}


def test_reasoning_renames_max_tokens_and_drops_sampling_parameters() -> None:
    out = rewrite(REQUEST, reasoning=True)
    assert out == {
        "model": "dep",
        "messages": REQUEST["messages"],
        "max_completion_tokens": 50,
        "user": "u1",
        "tools": REQUEST["tools"],
    }
    for name in REASONING_UNSUPPORTED:
        assert name not in out


def test_reasoning_keeps_an_existing_max_completion_tokens() -> None:
    out = rewrite({**REQUEST, "max_completion_tokens": 7}, reasoning=True)
    assert out["max_completion_tokens"] == 7
    assert "max_tokens" not in out


def test_reasoning_without_any_limit_adds_none() -> None:
    out = rewrite({"model": "m", "messages": []}, reasoning=True)
    assert out == {"model": "dep", "messages": []}


def test_usage_asked_for_streams_only_when_wanted() -> None:
    stream = {"model": "m", "messages": [], "stream": True}
    assert rewrite(stream, want_usage=True)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in rewrite(stream, want_usage=False)
    assert "stream_options" not in rewrite({**stream, "stream": False}, want_usage=True)
    assert "stream_options" not in rewrite({**stream, "stream": "yes"}, want_usage=True)


def test_clients_other_stream_options_are_kept() -> None:
    body = {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": False},
    }
    out = rewrite(body, want_usage=True)
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert rewrite({**body, "stream_options": None}, want_usage=True)["stream_options"] == {
        "include_usage": True
    }


def test_input_is_not_mutated() -> None:
    body = copy.deepcopy(REQUEST)
    body.update(stream=True, stream_options={"x": 1})
    before = copy.deepcopy(body)
    rewrite(body, reasoning=True, want_usage=True, deployment="other")
    assert body == before


def test_unicode_and_numbers_survive_byte_exact_semantics() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo 👋 \u2028"}], "n": 2}
    assert rewrite(body)["messages"] == body["messages"]


def test_usage_is_read_from_a_whole_answer() -> None:
    body = orjson.dumps(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 3},
            },
        }
    )
    assert CHAT.facts(body).tokens == {
        "prompt_tokens": 9,
        "completion_tokens": 5,
        "cached_tokens": 2,
        "reasoning_tokens": 3,
    }
    assert CHAT.facts(b"not json").tokens == {}


def test_parse_requires_messages_and_model() -> None:
    from app.errors import BadRequest

    with pytest.raises(BadRequest) as err:
        CHAT.parse(b'{"model": "m"}', None)
    assert err.value.param == "messages"
    with pytest.raises(BadRequest) as err:
        CHAT.parse(b'{"messages": [{"role": "user", "content": "x"}]}', None)
    assert err.value.param == "model"
    parsed = CHAT.parse(b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', "p")
    assert (parsed.model, parsed.stream) == ("p", True)


# --- the request on the wire (respx through HttpxUpstream) --------------------------------------

CONFIG = """
resources:
  eastus:
    endpoint: https://contoso-eastus.openai.azure.com/
    keys: [east-key-one-SECRET, east-key-two-SECRET]
  sweden:
    endpoint: https://contoso-sweden.services.ai.azure.com/openai
    keys: [swe-key-one-SECRET]
    api: legacy
    api_version: "2024-10-21"
models:
  gpt-4o:
    - {resource: sweden, deployment: gpt4o-prod}
    - {resource: eastus, deployment: gpt-4o}
  o3-mini: [eastus/o3-mini-dep]
"""
TIMEOUTS = Timeouts(connect=5, read=5)


async def send_one(model: str, index: int, body: dict[str, Any]) -> httpx.Request:
    target = build_table(parse(CONFIG, {}))[model][index]
    upstream = HttpxUpstream()
    try:
        with respx.mock(assert_all_called=True) as mock:
            route = mock.post(url__startswith=target.url.split("?")[0]).mock(
                return_value=httpx.Response(200, json={"ok": True})
            )
            payload = rewrite_body(
                body, deployment=target.deployment, reasoning=target.reasoning, want_usage=True
            )
            resp = await upstream.request(
                "POST",
                target.url,
                azure.request_headers(target.keys[0].value),
                payload,
                timeout=TIMEOUTS,
            )
            assert resp.status == 200
            assert orjson.loads(await resp.read()) == {"ok": True}
            await resp.aclose()
            request: httpx.Request = route.calls.last.request
            return request
    finally:
        await upstream.aclose()


@pytest.mark.anyio
async def test_v1_request_on_the_wire() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    request = await send_one("gpt-4o", 1, body)
    assert str(request.url) == "https://contoso-eastus.openai.azure.com/openai/v1/chat/completions"
    assert request.method == "POST"
    assert request.headers["api-key"] == "east-key-one-SECRET"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    sent = orjson.loads(request.content)
    assert sent["model"] == "gpt-4o"
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == body["messages"]


@pytest.mark.anyio
async def test_legacy_request_on_the_wire() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    request = await send_one("gpt-4o", 0, body)
    assert request.url.host == "contoso-sweden.services.ai.azure.com"
    assert request.url.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "swe-key-one-SECRET"
    assert "authorization" not in request.headers
    assert orjson.loads(request.content)["messages"] == body["messages"]


@pytest.mark.anyio
async def test_reasoning_request_on_the_wire() -> None:
    body = {
        "model": "o3-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "temperature": 1,
    }
    request = await send_one("o3-mini", 0, body)
    sent = orjson.loads(request.content)
    assert sent == {
        "model": "o3-mini-dep",
        "messages": body["messages"],
        "max_completion_tokens": 9,
    }
