"""app/azure.py: URL, headers, body rewrite, Retry-After; and the request on the wire."""

from __future__ import annotations

import copy
import email.utils
import re
from typing import Any

import httpx
import orjson
import pytest
import respx

from app import azure
from app.config import parse
from app.routing import build_table
from app.upstream import HttpxUpstream, Timeouts

# --- URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://x.openai.azure.com", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com//", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/v1", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/v1/", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/OpenAI/V1", "https://x.openai.azure.com"),
        ("  https://x.services.ai.azure.com/ ", "https://x.services.ai.azure.com"),
        ("http://127.0.0.1:9000/openai", "http://127.0.0.1:9000"),
        ("https://apim.example.com/team/openai", "https://apim.example.com/team"),
        ("https://x.example.com/openai-proxy", "https://x.example.com/openai-proxy"),
    ],
)
def test_normalize_endpoint(given: str, expected: str) -> None:
    assert azure.normalize_endpoint(given) == expected


PORTAL = (
    "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            PORTAL,
            azure.Endpoint(
                "https://x.openai.azure.com", "gpt-4o", "2024-10-21", "legacy", "chat/completions"
            ),
        ),
        (
            "https://x.openai.azure.com/openai/v1/chat/completions",
            azure.Endpoint("https://x.openai.azure.com", None, None, "v1", "chat/completions"),
        ),
        (
            "https://x.openai.azure.com/openai/deployments/gpt-4o",
            azure.Endpoint("https://x.openai.azure.com", "gpt-4o", None, "legacy"),
        ),
        (
            "https://x.openai.azure.com/openai/v1/?api-version=preview",
            azure.Endpoint("https://x.openai.azure.com", None, "preview", "v1"),
        ),
        (
            "https://x.openai.azure.com?api-version=2024-06-01",
            azure.Endpoint("https://x.openai.azure.com", None, "2024-06-01"),
        ),
    ],
)
def test_pasted_urls_are_understood(given: str, expected: azure.Endpoint) -> None:
    assert azure.parse_endpoint(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("x.openai.azure.com", "must be an http(s) URL"),
        ("https://x.openai.azure.com/chat", "write just https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/responses", "write just https://x.openai.azure.com"),
        ("https://x.services.ai.azure.com/api/projects/p", "a Foundry project endpoint"),
        ("https://x.openai.azure.com/openai/v1?foo=1", "query parameter(s) foo are not used"),
        ("https://u:p@x.openai.azure.com", "must not hold a user name or password"),
    ],
)
def test_urls_the_gateway_cannot_use_are_refused_with_what_to_write(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        azure.parse_endpoint(given)


def test_chat_url_v1_ignores_deployment_and_version() -> None:
    url = azure.chat_url("https://x.openai.azure.com/openai/v1/", "v1", "gpt4o-prod", "2024-06-01")
    assert url == "https://x.openai.azure.com/openai/v1/chat/completions"


def test_chat_url_legacy() -> None:
    url = azure.chat_url("https://x.openai.azure.com/", "legacy", "gpt4o-prod", "2025-01-01")
    assert url == (
        "https://x.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2025-01-01"
    )


def test_chat_url_legacy_default_version() -> None:
    url = azure.chat_url("https://x.openai.azure.com", "legacy", "d", None)
    assert url.endswith("/openai/deployments/d/chat/completions?api-version=2024-10-21")
    assert azure.LEGACY_API_VERSION == "2024-10-21"


def test_request_headers_carry_only_the_key() -> None:
    assert azure.request_headers("the-key") == {
        "api-key": "the-key",
        "content-type": "application/json",
    }


# --- reasoning models -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["o1", "o1-mini", "o3", "o3-mini", "O3-Mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5.2"],
)
def test_is_reasoning(name: str) -> None:
    assert azure.is_reasoning(name)


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-35-turbo",
        "gpt-5-chat",
        "gpt-5.2-chat",
        "GPT-5-Chat",
        "gpt-5-chat-latest",
        "gpt-5-chat-2025-08-07",
        "model-router",
    ],
)
def test_is_not_reasoning(name: str) -> None:
    assert not azure.is_reasoning(name)


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
    out = azure.rewrite_body(body, **args)
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
    for name in azure.REASONING_UNSUPPORTED:
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


# --- Retry-After -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),  # ms is more precise
        ({"x-ms-retry-after-ms": "300", "retry-after": "9"}, 0.3),
        ({"retry-after-ms": "garbage", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "-5", "x-ms-retry-after-ms": "20"}, 0.02),
        ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
        ({"retry-after": "garbage"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert azure.retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert azure.retry_after({"retry-after": future}, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert azure.retry_after({"retry-after": past}, now=now) == 0.0


def test_retry_after_reads_case_insensitive_headers() -> None:
    assert azure.retry_after(httpx.Headers({"Retry-After-Ms": "40"})) == 0.04


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
            payload = azure.rewrite_body(
                body, deployment=target.deployment, reasoning=target.reasoning, want_usage=True
            )
            resp = await upstream.post(
                target.url, azure.request_headers(target.keys[0].value), payload, timeout=TIMEOUTS
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
