"""The real clients, end to end: openai-python's two classes and Chatbox's own libraries.

Chatbox talks through the Vercel AI SDK: `@ai-sdk/openai-compatible` for its custom
provider, `@ai-sdk/azure` for its Azure provider. `tests/clients/chat.mjs` drives them
(`npm ci` in tests/clients installs them; `.ci/run` does). Without node_modules the node
tests skip, except under CI, where they fail.

gpt-4o prefers sweden (legacy form, api_version 2024-10-21), so every test can check that
the client's own `api-version` did not reach Azure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from app.simulator import count_prompt_tokens
from tests.conftest import GATEWAY_KEY, ROOT, base_config

CLIENTS = ROOT / "tests" / "clients"
PROMPT = "hello from chatbox"
CLIENT_API_VERSION = "2025-04-01-preview"  # what the clients send; never what Azure gets


@pytest.fixture
def recorded() -> Iterator[tuple[httpx.Client, list[httpx.Request]]]:
    """An httpx client for the SDK that keeps every request it sends."""
    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as http:
        yield http, sent


def azure_client(gw: Any, http: httpx.Client, key: str = GATEWAY_KEY, **kw: Any) -> Any:
    return openai.AzureOpenAI(
        azure_endpoint=gw.url,
        api_version=CLIENT_API_VERSION,
        api_key=key,
        max_retries=0,
        http_client=http,
        **kw,
    )


def assert_upstream_is_the_gateways_own(sim: Any) -> None:
    """Azure saw the gateway's key and api-version, nothing of the client's."""
    last = sim["sweden"].requests()[-1]
    assert last["path"] == "/openai/deployments/gpt-4o/chat/completions"
    assert last["query"] == "api-version=2024-10-21"
    assert last["headers"]["api-key"] == "sim-key-1"
    assert "authorization" not in last["headers"]
    assert GATEWAY_KEY not in json.dumps(last)


# openai-python ------------------------------------------------------------------------------


def test_openai_class_plain_and_stream(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT}]

    done = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert done.choices[0].message.content == f"You said: {PROMPT}"
    assert done.usage is not None
    assert done.usage.prompt_tokens == count_prompt_tokens(messages)

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"You said: {PROMPT}"
    assert chunks[-1].choices == []  # the usage chunk the client asked for, last
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == count_prompt_tokens(messages)
    assert all(c.usage is None for c in chunks[:-1])
    assert_upstream_is_the_gateways_own(sim)


@pytest.mark.parametrize("stream", [False, True])
def test_azure_openai_class_sends_api_key_to_the_deployment_route(
    sim: Any, start_gateway: Any, recorded: Any, stream: bool
) -> None:
    gw = start_gateway(base_config(sim))
    http, sent = recorded
    client = azure_client(gw, http)
    messages: Any = [{"role": "user", "content": PROMPT}]
    if stream:
        chunks = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        done = client.chat.completions.create(model="gpt-4o", messages=messages)
        text = done.choices[0].message.content or ""
    assert text == f"You said: {PROMPT}"

    request = sent[-1]
    assert request.url.path == "/openai/deployments/gpt-4o/chat/completions"
    assert request.url.params["api-version"] == CLIENT_API_VERSION
    assert request.headers["api-key"] == GATEWAY_KEY
    assert_upstream_is_the_gateways_own(sim)


def test_azure_openai_class_with_azure_deployment(
    sim: Any, start_gateway: Any, recorded: Any
) -> None:
    """`azure_deployment=` puts the name in the base URL: the path names the model."""
    gw = start_gateway(base_config(sim))
    http, sent = recorded
    client = azure_client(gw, http, azure_deployment="gpt-4o-mini")
    stream = client.chat.completions.create(
        model="ignored-by-the-route", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"You said: {PROMPT}"
    assert sent[-1].url.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    last = sim["eastus"].requests()[-1]  # gpt-4o-mini lives on eastus (v1 form)
    assert last["path"] == "/openai/v1/chat/completions"
    assert last["query"] == ""
    assert last["body"]["model"] == "gpt-4o-mini"


def test_azure_openai_class_with_api_key_and_bearer_both(
    sim: Any, start_gateway: Any, recorded: Any
) -> None:
    """openai-python up to 2.33 sent `api-key` and a Bearer with the same key."""
    gw = start_gateway(base_config(sim))
    http, sent = recorded
    client = azure_client(gw, http, default_headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
    done = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}]
    )
    assert done.choices[0].message.content == f"You said: {PROMPT}"
    assert sent[-1].headers["authorization"] == f"Bearer {GATEWAY_KEY}"
    assert sent[-1].headers["api-key"] == GATEWAY_KEY

    wrong = azure_client(gw, http, key="wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


# Chatbox's libraries (node) -----------------------------------------------------------------


def require_node_clients() -> str:
    """The node binary; skip (or fail under CI) when the client libraries are missing."""
    node = shutil.which("node")
    if node is None:
        why = "node is not installed"
    elif not (CLIENTS / "node_modules" / "ai").is_dir():
        why = "tests/clients/node_modules is missing: run `npm ci` in tests/clients"
    else:
        return node
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the client tests must run)")
    pytest.skip(why)


def run_chat(*args: str) -> dict[str, Any]:
    node = require_node_clients()
    proc = subprocess.run(
        [node, "chat.mjs", *args],
        cwd=CLIENTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"chat.mjs printed nothing (exit {proc.returncode}): {proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0, f"chat.mjs failed: {result} {proc.stderr}"
    return result


@pytest.mark.parametrize("suffix", ["/v1", ""])
def test_chatbox_custom_provider_with_and_without_v1(
    sim: Any, start_gateway: Any, suffix: str
) -> None:
    """Chatbox's custom provider: API host with or without /v1, models from {host}/models."""
    gw = start_gateway(base_config(sim))
    host = gw.url + suffix
    out = run_chat(
        "--provider", "openai-compatible", "--base-url", host,
        "--api-key", GATEWAY_KEY, "--model", "gpt-4o", "--models",
    )  # fmt: skip
    assert out["urls"] == [f"{host}/models", f"{host}/chat/completions"]
    assert set(out["models"]) == {"gpt-4o", "gpt-4o-mini", "o3-mini"}
    assert out["text"] == f"You said: {PROMPT}"
    assert out["deltas"] > 1  # it really streamed
    assert out["finishReason"] == "stop"
    # the client did not ask for usage: the upstream usage chunk was not forwarded
    assert out["usage"].get("inputTokens") is None
    assert_upstream_is_the_gateways_own(sim)


def test_chatbox_custom_provider_gets_usage_when_it_asks(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    out = run_chat(
        "--provider", "openai-compatible", "--base-url", gw.base_url,
        "--api-key", GATEWAY_KEY, "--model", "gpt-4o", "--include-usage",
    )  # fmt: skip
    assert out["text"] == f"You said: {PROMPT}"
    assert out["usage"]["inputTokens"] == count_prompt_tokens([{"content": PROMPT}])
    assert out["usage"]["outputTokens"] == len(f"You said: {PROMPT}".split())


AZURE_FORMS = {
    # Chatbox's Azure provider against an Azure-looking host: Azure's v1 URL form
    "v1": (
        ["--base-url", "http://gateway.openai.azure.com:{port}/openai"],
        "/openai/v1/chat/completions?api-version=v1",
    ),
    # the same provider against any other host name: no /v1, no api-version
    "plain-host": (["--base-url", "{url}/openai"], "/openai/chat/completions"),
    # older Chatbox versions: deployment-based URLs
    "deployment-urls": (
        ["--base-url", "{url}/openai", "--deployment-urls", "--api-version", CLIENT_API_VERSION],
        f"/openai/deployments/gpt-4o/chat/completions?api-version={CLIENT_API_VERSION}",
    ),
}


@pytest.mark.parametrize("form", list(AZURE_FORMS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_chatbox_azure_provider(sim: Any, start_gateway: Any, form: str, stream: bool) -> None:
    gw = start_gateway(base_config(sim))
    extra, path = AZURE_FORMS[form]
    args = [a.format(url=gw.url, port=gw.port) for a in extra]
    out = run_chat(
        "--provider", "azure", "--api-key", GATEWAY_KEY, "--model", "gpt-4o",
        "--connect", gw.url, *args, *([] if stream else ["--no-stream"]),
    )  # fmt: skip
    assert [httpx.URL(u).raw_path.decode() for u in out["urls"]] == [path]
    assert out["text"] == f"You said: {PROMPT}"
    if stream:
        assert out["deltas"] > 1
    # @ai-sdk/azure asks for usage in streams (include_usage) and gets it
    assert out["usage"]["inputTokens"] == count_prompt_tokens([{"content": PROMPT}])
    assert_upstream_is_the_gateways_own(sim)


def test_chatbox_azure_provider_with_a_wrong_key_gets_401(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    node = require_node_clients()
    proc = subprocess.run(
        [node, "chat.mjs", "--provider", "azure", "--base-url", gw.url + "/openai",
         "--api-key", "wrong", "--model", "gpt-4o"],
        cwd=CLIENTS, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == 401
    assert "Incorrect API key" in out["error"]
    assert sim["sweden"].requests() == []
