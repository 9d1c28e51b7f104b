"""What every client relies on, checked on the wire against a real gateway.

- reasoning deployments get `max_tokens` -> `max_completion_tokens` and no sampling
  parameters (seen upstream through the simulator's `/_sim/requests`);
- the stream's shape: every event has a `choices` array, no prompt-filter-only or
  annotation-only chunk, the usage chunk only when asked, SSE headers, `data: [DONE]`;
- headers: `x-request-id` on every response, Azure's region / request id / rate-limit
  headers passed through;
- the Azure-shaped routes: any `api-version` accepted and not passed on, the path's
  name is the public model;
- auth as Bearer, `api-key`, or both.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import GATEWAY_KEY, base_config

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
HELLO = [{"role": "user", "content": "hello gateway"}]
SAMPLING = {
    "temperature": 0.2,
    "top_p": 0.9,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
}


def compat_config(sim: Any) -> dict[str, Any]:
    config = base_config(sim)
    config["models"].update(
        {
            "gpt-5.2-chat": ["eastus/gpt-5.2-chat"],  # gpt-5*-chat: not a reasoning model
            "strict-4o": [{"resource": "eastus", "deployment": "gpt-4o", "reasoning": True}],
            "loose-o3": [{"resource": "eastus", "deployment": "o3-mini", "reasoning": False}],
        }
    )
    return config


def events(body: bytes) -> list[bytes]:
    """The SSE events of a complete stream body, each without its trailing blank line."""
    assert body.endswith(b"\n\n"), body[-80:]
    return body[:-2].split(b"\n\n")


def chunks_of(body: bytes) -> list[dict[str, Any]]:
    """Parsed `data:` payloads, after checking the stream's frame rules."""
    evs = events(body)
    assert evs[-1] == b"data: [DONE]"
    out = []
    for ev in evs[:-1]:
        assert ev.startswith(b"data: "), ev
        chunk = orjson.loads(ev[6:])
        assert isinstance(chunk.get("choices"), list), chunk  # every event has choices
        assert "prompt_filter_results" not in chunk, chunk
        out.append(chunk)
    return out


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def post(gw: Any, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={**AUTH, **headers}, timeout=15)


# reasoning translation ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_deployment_gets_max_completion_tokens_and_no_sampling(
    sim: Any, start_gateway: Any, stream: bool
) -> None:
    gw = start_gateway(compat_config(sim))
    body = {
        "model": "o3-mini",
        "messages": HELLO,
        "max_tokens": 50,
        "seed": 7,
        "user": "u1",
        "stream": stream,
        **SAMPLING,
    }
    r = post(gw, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    sent = sim["eastus"].requests()[-1]["body"]
    assert sent["max_completion_tokens"] == 50
    assert "max_tokens" not in sent
    assert not set(SAMPLING) & set(sent)
    assert sent["seed"] == 7 and sent["user"] == "u1"  # everything else untouched
    assert sent["messages"] == HELLO


def test_reasoning_keeps_an_explicit_max_completion_tokens(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    body = {"model": "o3-mini", "messages": HELLO, "max_tokens": 50, "max_completion_tokens": 9}
    assert post(gw, "/v1/chat/completions", body).status_code == 200
    sent = sim["eastus"].requests()[-1]["body"]
    assert sent["max_completion_tokens"] == 9
    assert "max_tokens" not in sent


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5.2-chat"])
def test_non_reasoning_models_keep_their_parameters(
    sim: Any, start_gateway: Any, model: str
) -> None:
    gw = start_gateway(compat_config(sim))
    r = post(gw, "/v1/chat/completions", {"model": model, "messages": HELLO, "max_tokens": 50})
    assert r.status_code == 200, r.text
    r = post(gw, "/v1/chat/completions", {"model": model, "messages": HELLO, **SAMPLING})
    assert r.status_code == 200, r.text
    first, second = sim["eastus"].requests()[-2:]
    assert first["body"]["max_tokens"] == 50
    assert "max_completion_tokens" not in first["body"]
    assert {k: second["body"][k] for k in SAMPLING} == SAMPLING


def test_reasoning_flag_overrides_the_name(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    # reasoning: true on a gpt-4o deployment: translated although the name says otherwise
    r = post(gw, "/v1/chat/completions", {"model": "strict-4o", "messages": HELLO, **SAMPLING})
    assert r.status_code == 200, r.text
    assert not set(SAMPLING) & set(sim["eastus"].requests()[-1]["body"])
    # reasoning: false on o3-mini: sent as is, so Azure's 400 reaches the client unchanged
    r = post(gw, "/v1/chat/completions", {"model": "loose-o3", "messages": HELLO, "top_p": 0.5})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_parameter"
    assert r.json()["error"]["param"] == "top_p"
    assert sim["eastus"].requests()[-1]["body"]["top_p"] == 0.5


# stream shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini"])  # legacy and v1 upstream form
def test_stream_shape_and_headers(sim: Any, start_gateway: Any, model: str) -> None:
    gw = start_gateway(compat_config(sim))
    r = post(gw, "/v1/chat/completions", {"model": model, "messages": HELLO, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    chunks = chunks_of(r.content)
    assert text_of(chunks) == "You said: hello gateway"
    assert all(c["id"] and c["choices"] for c in chunks)  # no filter-only, no usage chunk
    assert all(c.get("usage") is None for c in chunks)
    # the gateway asked Azure for usage (to count tokens) and kept it to itself
    assert sim["sweden" if model == "gpt-4o" else "eastus"].requests()[-1]["body"][
        "stream_options"
    ] == {"include_usage": True}


def test_stream_usage_chunk_only_when_asked(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    body = {
        "model": "gpt-4o",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = chunks_of(post(gw, "/v1/chat/completions", body).content)
    assert text_of(chunks) == "You said: hello gateway"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] > 0
    assert last["usage"]["completion_tokens"] > 0
    assert all(c.get("usage") is None for c in chunks[:-1])


def test_stream_drops_asynchronous_filter_annotations(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    sim["eastus"].fault("annotations")
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    chunks = chunks_of(post(gw, "/v1/chat/completions", body).content)
    assert text_of(chunks) == "You said: hello gateway"
    for chunk in chunks:
        assert all("delta" in choice for choice in chunk["choices"]), chunk
        assert all("content_filter_offsets" not in choice for choice in chunk["choices"])


# headers ------------------------------------------------------------------------------------

REQUEST_ID = re.compile(r"^[0-9a-f]{16,}$")


@pytest.mark.parametrize("stream", [False, True])
def test_azure_headers_pass_through_and_request_id_is_ours(
    sim: Any, start_gateway: Any, stream: bool
) -> None:
    gw = start_gateway(compat_config(sim))
    for model, region in (("gpt-4o", "sweden"), ("gpt-4o-mini", "eastus")):
        body = {"model": model, "messages": HELLO, "stream": stream}
        r = post(gw, "/v1/chat/completions", body)
        assert r.status_code == 200
        assert r.headers["x-ms-region"] == region
        assert r.headers["apim-request-id"]
        assert r.headers["x-ratelimit-remaining-requests"] == "9999"
        assert r.headers["x-ratelimit-remaining-tokens"] == "999000"
        # one x-request-id, the gateway's own (Azure's stays behind)
        ids = r.headers.get_list("x-request-id")
        assert len(ids) == 1
        assert REQUEST_ID.match(ids[0])
        assert ids[0] != r.headers["apim-request-id"]


def test_request_id_echoed_on_every_kind_of_response(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    chat = {"model": "gpt-4o", "messages": HELLO}
    calls: list[tuple[str, str, dict[str, Any] | None, dict[str, str], int]] = [
        ("POST", "/v1/chat/completions", chat, AUTH, 200),
        ("POST", "/v1/chat/completions", {**chat, "stream": True}, AUTH, 200),
        ("POST", "/openai/deployments/gpt-4o/chat/completions", chat, AUTH, 200),
        ("POST", "/v1/chat/completions", chat, {"Authorization": "Bearer wrong"}, 401),
        ("POST", "/v1/chat/completions", {**chat, "model": "nope"}, AUTH, 404),
        ("POST", "/v1/chat/completions", {"model": "gpt-4o"}, AUTH, 400),
        ("GET", "/v1/chat/completions", None, AUTH, 405),
        ("GET", "/v1/models", None, AUTH, 200),
        ("GET", "/models", None, {}, 401),
        ("GET", "/no/such/route", None, AUTH, 404),
    ]
    seen = set()
    for method, path, body, headers, status in calls:
        mine = f"client-{method}-{status}-{len(seen)}"
        r = httpx.request(
            method, gw.url + path, json=body, headers={**headers, "x-request-id": mine}, timeout=15
        )
        assert r.status_code == status, (path, r.text)
        assert r.headers.get_list("x-request-id") == [mine], path
        if status >= 400:
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
        # and without one, a fresh id each time
        r = httpx.request(method, gw.url + path, json=body, headers=headers, timeout=15)
        new = r.headers.get_list("x-request-id")
        assert len(new) == 1 and REQUEST_ID.match(new[0]) and new[0] not in seen, path
        seen.add(new[0])


# Azure-shaped routes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o/chat/completions?api-version=2025-04-01-preview",
        "/openai/deployments/gpt-4o/chat/completions?api-version=not-a-version",
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/v1/chat/completions?api-version=v1",
        "/openai/v1/chat/completions?api-version=preview",
        "/openai/chat/completions?api-version=2024-02-01",
        "/v1/chat/completions?api-version=2024-02-01",
        "/chat/completions",
        "/v1/chat/completions/",
    ],
)
def test_any_api_version_is_accepted_and_not_passed_on(
    sim: Any, start_gateway: Any, path: str
) -> None:
    gw = start_gateway(compat_config(sim))
    for model, region, query in (
        ("gpt-4o", "sweden", "api-version=2024-10-21"),  # legacy: the configured version
        ("gpt-4o-mini", "eastus", ""),  # v1: none at all
    ):
        target = path.replace("gpt-4o", model, 1) if "/deployments/" in path else path
        r = post(gw, target, {"model": model, "messages": HELLO})
        assert r.status_code == 200, (target, r.text)
        assert r.json()["choices"][0]["message"]["content"] == "You said: hello gateway"
        assert sim[region].requests()[-1]["query"] == query


def test_deployment_route_name_is_the_public_model(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    r = post(
        gw,
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        {"model": "gpt-4o", "messages": HELLO},  # the path wins over the body
    )
    assert r.status_code == 200
    assert sim["eastus"].requests()[-1]["body"]["model"] == "gpt-4o-mini"
    assert sim["sweden"].requests() == []

    r = post(gw, "/openai/deployments/nope/chat/completions", {"messages": HELLO})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "nope" in r.json()["error"]["message"]


def test_model_lists_on_every_route(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(compat_config(sim))
    expected = set(compat_config(sim)["models"])
    for path in ("/v1/models", "/models", "/openai/models", "/openai/v1/models"):
        r = httpx.get(gw.url + path + "?api-version=v1", headers={"api-key": GATEWAY_KEY})
        assert r.status_code == 200, path
        assert {m["id"] for m in r.json()["data"]} == expected, path


# auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {GATEWAY_KEY}"},
        {"api-key": GATEWAY_KEY},
        {"Authorization": f"Bearer {GATEWAY_KEY}", "api-key": GATEWAY_KEY},
    ],
    ids=["bearer", "api-key", "both"],
)
def test_auth_as_bearer_api_key_or_both(sim: Any, start_gateway: Any, headers: Any) -> None:
    gw = start_gateway(compat_config(sim))
    body = {"model": "gpt-4o", "messages": HELLO}
    r = httpx.post(gw.url + "/openai/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    wrong = {k: v.replace(GATEWAY_KEY, "wrong") for k, v in headers.items()}
    r = httpx.post(gw.url + "/openai/v1/chat/completions", json=body, headers=wrong)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert sim["sweden"].stats()["requests"] == 1
