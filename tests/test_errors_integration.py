"""Issue 2, section 3 end to end: every error with its status and OpenAI shape.

A real gateway process (`aoai-gateway serve`), the two simulated Azure resources
(eastus speaks v1, sweden legacy) and, where a client would use it, the real
openai SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import GATEWAY_KEY, SIM_KEYS, base_config

BOT_KEY = "bot-gateway-key-7781"
WRONG_KEY = "wrong-gateway-key-5523"
ALL_SECRETS = (GATEWAY_KEY, BOT_KEY, WRONG_KEY, *SIM_KEYS)
MIB = 1024 * 1024
MESSAGES = [{"role": "user", "content": "hello"}]


def config(sim: dict[str, Any], **gateway: Any) -> dict[str, Any]:
    cfg = base_config(sim)
    cfg["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY},
            {"name": "ci-bot", "key": BOT_KEY, "models": ["gpt-4o-mini", "o3-*"]},
        ],
        **gateway,
    }
    cfg["models"]["o3-unstripped"] = [
        {"resource": "eastus", "deployment": "o3-mini", "reasoning": False},
        {"resource": "sweden", "deployment": "o3-mini", "reasoning": False},
    ]
    return cfg


@pytest.fixture
def client() -> Iterator[Callable[..., openai.OpenAI]]:
    """`client(gw, key)`: an openai SDK client on the gateway, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(gw: Any, key: str = GATEWAY_KEY) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30))
        return made[-1]

    yield make
    for c in made:
        c.close()


def post(gw: Any, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    hdrs = {"Authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json"}
    hdrs.update(headers or {})
    if isinstance(body, dict | list):
        kw["content"] = orjson.dumps(body)
    elif body is not None:
        kw["content"] = body
    return httpx.post(gw.url + "/v1/chat/completions", headers=hdrs, timeout=30, **kw)


def assert_error(
    resp: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    body = resp.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code
    assert err["param"] == param
    return err


def assert_no_secrets(gw: Any, *texts: str) -> None:
    """Stop the gateway (its access log is flushed at shutdown), then read every line."""
    gw.stop()
    logs = gw.logs()
    assert logs, "the gateway wrote no log at all"
    for secret in ALL_SECRETS:
        assert secret not in logs, secret
        for text in texts:
            assert secret not in text, secret


def reply_text(result: Any, stream: bool) -> str:
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in result if c.choices)
    return str(result.choices[0].message.content)


def chats(sim: dict[str, Any], region: str) -> int:
    return int(sim[region].stats()["requests"])


# --- the caller's mistakes: answered by the gateway, nothing sent upstream ---------------------


def test_caller_mistakes_get_openai_errors(sim: Any, start_gateway: Any, client: Any) -> None:
    gw = start_gateway(config(sim))
    body = {"model": "gpt-4o", "messages": MESSAGES}

    # no key / unknown key -> 401
    err = assert_error(post(gw, body, {"Authorization": ""}), 401, "invalid_api_key")
    assert "Missing API key" in err["message"]
    assert_error(post(gw, body, {"Authorization": f"Bearer {WRONG_KEY}"}), 401, "invalid_api_key")
    assert_error(post(gw, body, {"Authorization": "", "api-key": WRONG_KEY}), 401)
    with pytest.raises(openai.AuthenticationError) as auth:
        client(gw, WRONG_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert auth.value.status_code == 401
    assert auth.value.code == "invalid_api_key"
    # the api-key header works as well as Bearer
    ok = post(gw, body, {"Authorization": "", "api-key": GATEWAY_KEY})
    assert ok.status_code == 200, ok.text

    # model outside the key's allowlist -> 403
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(gw, BOT_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert denied.value.status_code == 403
    err = assert_error(denied.value.response, 403, "permission_denied", "model")
    assert "gpt-4o" in err["message"]
    done = client(gw, BOT_KEY).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert done.choices[0].message.content == "You said: hello"
    # a restricted key cannot probe which other models exist: 403 either way
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, BOT_KEY).chat.completions.create(model="gpt-9-turbo", messages=MESSAGES)

    # unknown model -> 404 naming it
    with pytest.raises(openai.NotFoundError) as missing:
        client(gw).chat.completions.create(model="gpt-9-turbo", messages=MESSAGES)
    err = assert_error(missing.value.response, 404, "model_not_found", "model")
    assert "'gpt-9-turbo'" in err["message"]

    # invalid JSON, missing model, missing messages -> 400
    err = assert_error(post(gw, b'{"model": "gpt-4o", "messages": ['), 400)
    assert err["type"] == "invalid_request_error"
    assert "JSON" in err["message"]
    assert_error(post(gw, b""), 400)
    assert_error(post(gw, [body]), 400)
    assert_error(post(gw, {"messages": MESSAGES}), 400, param="model")
    assert_error(post(gw, {"model": "", "messages": MESSAGES}), 400, param="model")
    assert_error(post(gw, {"model": "gpt-4o"}), 400, param="messages")
    assert_error(post(gw, {"model": "gpt-4o", "messages": []}), 400, param="messages")
    assert_error(post(gw, {"model": "gpt-4o", "messages": "hi"}), 400, param="messages")
    with pytest.raises(openai.BadRequestError) as bad:
        client(gw).chat.completions.create(model="gpt-4o", messages=[])
    assert bad.value.param == "messages"

    # only the two successful calls reached Azure
    assert chats(sim, "sweden") + chats(sim, "eastus") == 2
    assert_no_secrets(gw)


def test_bodies_over_the_limit_are_413_and_1mb_is_relayed(
    sim: Any, start_gateway: Any, client: Any
) -> None:
    gw = start_gateway(config(sim, max_body_bytes=2 * MIB))

    # 1 MB of content goes through to Azure whole
    big = "x" * MIB
    done = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": big}]
    )
    assert done.choices[0].message.content == ("You said: " + big)[:200]
    sent = sim["eastus"].requests()[-1]["body"]
    assert sent["messages"][0]["content"] == big

    # exactly at the limit is accepted, one byte more is not
    def sized(n: int) -> bytes:
        empty = orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]}
        )
        return empty.replace(b'"content":""', b'"content":"' + b"z" * (n - len(empty)) + b'"')

    assert len(sized(2 * MIB)) == 2 * MIB
    assert post(gw, sized(2 * MIB)).status_code == 200
    assert_error(post(gw, sized(2 * MIB + 1)), 413, "request_too_large")

    # over the limit, with a content-length
    over = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * (3 * MIB)}]}
    )
    err = assert_error(post(gw, over), 413, "request_too_large")
    assert str(2 * MIB) in err["message"]
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "y" * (3 * MIB)}]
        )
    assert info.value.status_code == 413

    # over the limit without a content-length (chunked transfer encoding)
    def chunked() -> Iterator[bytes]:
        for i in range(0, len(over), 64 * 1024):
            yield over[i : i + 64 * 1024]

    resp = post(gw, None, content=chunked())
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "request_too_large")

    # a chunked body under the limit is fine
    small = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    resp = post(gw, None, content=iter([small[:10], small[10:]]))
    assert resp.status_code == 200, resp.text

    assert chats(sim, "sweden") == 0  # nothing over the limit was forwarded
    assert chats(sim, "eastus") == 3
    assert_no_secrets(gw)


# --- Azure's answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_content_filter_is_passed_through_without_failover(
    sim: Any, start_gateway: Any, client: Any, stream: bool
) -> None:
    gw = start_gateway(config(sim))
    sim["sweden"].fault("content_filter")
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream)
    assert info.value.status_code == 400
    body = info.value.response.json()
    assert body["error"]["code"] == "content_filter"
    assert body["error"]["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert body["error"]["innererror"]["content_filter_result"]["hate"]["filtered"] is True
    assert info.value.response.headers.get("x-request-id")
    assert sim["sweden"].stats()["by_status"] == {"400": 1}
    assert chats(sim, "eastus") == 0  # every region would answer the same
    assert_no_secrets(gw)


def test_unsupported_parameter_is_passed_through_without_failover(
    sim: Any, start_gateway: Any, client: Any
) -> None:
    gw = start_gateway(config(sim))
    # reasoning: false makes the gateway send temperature to a reasoning deployment
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(
            model="o3-unstripped", messages=MESSAGES, temperature=0.5
        )
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "temperature"
    assert chats(sim, "eastus") == 1
    assert chats(sim, "sweden") == 0
    # the same request to the model the gateway knows is a reasoning one succeeds
    done = client(gw).chat.completions.create(model="o3-mini", messages=MESSAGES, temperature=0.5)
    assert done.choices[0].message.content


def test_every_key_rejected_is_502_naming_the_resources(
    sim: Any, start_gateway: Any, client: Any
) -> None:
    gw = start_gateway(config(sim))
    for region in ("sweden", "eastus"):
        for key in SIM_KEYS:
            sim[region].revoke(key)
    resp = post(gw, {"model": "gpt-4o", "messages": MESSAGES})
    err = assert_error(resp, 502, "upstream_keys_rejected")
    assert "eastus" in err["message"] and "sweden" in err["message"]
    for secret in ALL_SECRETS:
        assert secret not in resp.text
    for region in ("sweden", "eastus"):
        assert sim[region].stats()["by_status"] == {"401": 2}
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert info.value.status_code == 502
    assert_no_secrets(gw, resp.text)


@pytest.mark.parametrize("fault", ["429", "500"])
@pytest.mark.parametrize("stream", [False, True])
def test_ordered_fallback_on_throttling_and_server_errors(
    sim: Any, start_gateway: Any, client: Any, fault: str, stream: bool
) -> None:
    gw = start_gateway(config(sim))
    sim["sweden"].fault(fault, count=1, retry_after=30)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=stream
    )
    assert raw.headers["x-ms-region"] == "eastus"
    assert reply_text(raw.parse(), stream) == "You said: hello"
    assert sim["sweden"].stats()["by_status"] == {fault: 1}
    assert sim["eastus"].stats()["by_status"] == {"200": 1}
    assert_no_secrets(gw)


@pytest.mark.parametrize("stream", [False, True])
def test_ordered_fallback_on_deployment_not_found(
    sim: Any, start_gateway: Any, client: Any, stream: bool
) -> None:
    cfg = config(sim)
    cfg["models"]["gpt-4o"] = [
        {"resource": "sweden", "deployment": "gpt-4o-typo"},  # legacy: 404 DeploymentNotFound
        {"resource": "eastus", "deployment": "gpt-4o-typo"},  # v1: 404 DeploymentNotFound
        {"resource": "eastus", "deployment": "gpt-4o"},
    ]
    gw = start_gateway(cfg)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=stream
    )
    assert reply_text(raw.parse(), stream) == "You said: hello"
    assert sim["sweden"].stats()["by_status"] == {"404": 1}
    assert sim["eastus"].stats()["by_status"] == {"404": 1, "200": 1}
    assert "gpt-4o-typo" in gw.logs()  # the operator is told which deployment is missing
    assert_no_secrets(gw)


# --- models, health, headers ---------------------------------------------------------------------


def test_models_list_is_what_chatbox_fetch_needs(sim: Any, start_gateway: Any, client: Any) -> None:
    gw = start_gateway(config(sim))
    resp = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    body = resp.json()
    assert set(body) == {"object", "data"}
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["gpt-4o", "gpt-4o-mini", "o3-mini", "o3-unstripped"]
    for m in body["data"]:
        assert set(m) == {"id", "object", "created", "owned_by"}
        assert m["object"] == "model"
        assert type(m["created"]) is int and m["created"] > 1_600_000_000
        assert isinstance(m["owned_by"], str) and m["owned_by"]

    # filtered by the key's allowlist; the api-key header works too
    resp = httpx.get(gw.url + "/v1/models", headers={"api-key": BOT_KEY})
    assert [m["id"] for m in resp.json()["data"]] == ["gpt-4o-mini", "o3-mini", "o3-unstripped"]
    listed = [m.id for m in client(gw, BOT_KEY).models.list()]
    assert listed == ["gpt-4o-mini", "o3-mini", "o3-unstripped"]

    # Chatbox may put the base URL without /v1
    resp = httpx.get(gw.url + "/models", headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
    assert resp.status_code == 200 and len(resp.json()["data"]) == 4

    assert_error(httpx.get(gw.url + "/v1/models"), 401, "invalid_api_key")
    resp = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"})
    assert_error(resp, 401, "invalid_api_key")
    assert chats(sim, "eastus") + chats(sim, "sweden") == 0
    assert_no_secrets(gw)


def test_healthz_and_request_ids(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(config(sim))
    health = httpx.get(gw.url + "/healthz")
    assert health.status_code == 200
    assert health.headers.get("x-request-id")

    ok = post(gw, {"model": "gpt-4o", "messages": MESSAGES})
    assert ok.status_code == 200
    first = ok.headers["x-request-id"]
    second = post(gw, {"model": "gpt-4o", "messages": MESSAGES}).headers["x-request-id"]
    assert first and second and first != second
    # Azure's own request id is passed as apim-request-id, not as ours
    assert ok.headers.get("apim-request-id") and ok.headers["apim-request-id"] != first

    # a caller's x-request-id is kept, on answers and on errors
    for body, status in (({"model": "gpt-4o", "messages": MESSAGES}, 200), (b"{", 400)):
        resp = post(gw, body, {"x-request-id": "trace-abc-123"})
        assert resp.status_code == status
        assert resp.headers["x-request-id"] == "trace-abc-123"
    assert_no_secrets(gw)
    assert "trace-abc-123" in gw.logs()


@pytest.mark.parametrize("stream", [False, True])
def test_callers_credentials_and_hop_by_hop_headers_are_not_forwarded(
    sim: Any, start_gateway: Any, stream: bool
) -> None:
    gw = start_gateway(config(sim))
    caller_headers = {
        "Authorization": f"Bearer {GATEWAY_KEY}",
        "api-key": GATEWAY_KEY,
        "Connection": "keep-alive, x-hop-secret",
        "Keep-Alive": "timeout=99",
        "TE": "trailers",
        "Trailer": "x-after",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Proxy-Connection": "keep-alive",
        "X-Hop-Secret": "hop-value",
        "Cookie": "session=abc",
        "OpenAI-Organization": "org-caller",
    }
    variants = (
        caller_headers,  # both credentials
        {**caller_headers, "Authorization": ""},  # api-key only
        {**caller_headers, "api-key": ""},  # Bearer only
    )
    for hdrs in variants:
        resp = post(gw, {"model": "gpt-4o", "messages": MESSAGES, "stream": stream}, hdrs)
        assert resp.status_code == 200, resp.text
        # hop-by-hop headers of Azure's response are not copied back either
        for hop in ("keep-alive", "proxy-connection", "trailer", "upgrade"):
            assert hop not in resp.headers

    recorded = sim["sweden"].requests()
    assert len(recorded) == 3
    for request in recorded:
        headers = request["headers"]
        assert headers["api-key"] == SIM_KEYS[0]
        for name in (
            "authorization",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "x-hop-secret",
            "cookie",
            "openai-organization",
        ):
            assert name not in headers, name
        assert "x-hop-secret" not in headers.get("connection", "").lower()
        for value in headers.values():
            assert GATEWAY_KEY not in value
    assert_no_secrets(gw)
