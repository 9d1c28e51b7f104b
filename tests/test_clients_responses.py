"""Real Responses clients through the gateway, end to end.

- Codex CLI: `codex exec` (the binary `@openai/codex` ships) with a custom model provider
  pointing at the gateway (`wire_api = "responses"`, the key from an environment variable),
  configured in a throwaway CODEX_HOME, completing a turn.
- Chatbox's "OpenAI Responses" provider: `@ai-sdk/openai`'s `.responses()` model with
  `store: false`, driven by `tests/clients/responses.mjs`.

Offline-safe: both run against loopback only; Codex gets proxy variables pointing at a
closed loopback port, so anything it might try beyond loopback fails at once. gpt-4o
prefers sweden (legacy form: Responses at `/openai/responses?api-version=...`), o3-mini
lives on eastus (v1 form). Without node_modules these tests skip, except under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.simulator.models import REASONING_TOKENS
from app.simulator.responses_wire import count_input_tokens, input_items
from tests.conftest import GATEWAY_KEY, SIM_KEYS, Sim, base_config
from tests.test_clients import CLIENTS, require_node_clients

PROMPT = "say hello through the gateway"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, so a connection fails at once


def responses_requests(sim: Sim) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if "/responses" in r["path"]]


def expected_usage(body: dict[str, Any], reasoning: bool) -> tuple[int, int]:
    """(input, output) tokens the simulator answers for an upstream request body."""
    inputs = count_input_tokens(input_items(body), body.get("instructions"))
    answer = f"You said: {PROMPT}"
    return inputs, len(answer.split()) + (REASONING_TOKENS if reasoning else 0)


# --- Codex CLI ---------------------------------------------------------------------------------


def codex_binary() -> str:
    require_node_clients()
    exe = CLIENTS / "node_modules" / ".bin" / "codex"
    if not exe.exists():
        why = "@openai/codex is not installed: run `npm ci` in tests/clients"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI is set: the client tests must run)")
        pytest.skip(why)
    return str(exe)


def codex_home(tmp_path: Path, base_url: str, model: str) -> Path:
    """A CODEX_HOME whose config.toml points Codex at the gateway, as the README says."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "aoai-gateway"\n\n'
        "[model_providers.aoai-gateway]\n"
        'name = "aoai-gateway"\n'
        f'base_url = "{base_url}"\n'
        'env_key = "AOAI_GATEWAY_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"  # a failure shows at once instead of after retries
        "stream_max_retries = 0\n"
    )
    return home


def run_codex(
    tmp_path: Path, base_url: str, model: str, key: str = GATEWAY_KEY
) -> list[dict[str, Any]]:
    """`codex exec --json` once; its JSONL events."""
    exe = codex_binary()
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CODEX_HOME": str(codex_home(tmp_path, base_url, model)),
        "AOAI_GATEWAY_KEY": key,
        "HTTPS_PROXY": CLOSED,
        "HTTP_PROXY": CLOSED,
        "ALL_PROXY": CLOSED,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    proc = subprocess.run(
        [exe, "exec", "--json", "--skip-git-repo-check", "--ephemeral",
         "--sandbox", "read-only", "-C", str(work), PROMPT],
        cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"codex exec failed ({proc.returncode}): {events} {proc.stderr}"
    return events


def test_codex_exec_against_the_simulator_itself(sim: dict[str, Sim], tmp_path: Path) -> None:
    """The simulator speaks Codex's dialect (its event stream ends a real turn), so what the
    gateway tests below find is the gateway's doing. A v1 Azure endpoint takes the Bearer key."""
    events = run_codex(tmp_path, sim["eastus"].url + "/openai/v1", "o3-mini", SIM_KEYS[0])
    said = [e["item"]["text"] for e in events if e["type"] == "item.completed"
            and e["item"].get("type") == "agent_message"]  # fmt: skip
    assert said == [f"You said: {PROMPT}"]


@pytest.mark.parametrize(("model", "region"), [("gpt-4o", "sweden"), ("o3-mini", "eastus")])
def test_codex_exec_completes_a_turn(
    sim: dict[str, Sim], start_gateway: Any, tmp_path: Path, model: str, region: str
) -> None:
    gw = start_gateway(base_config(sim))
    events = run_codex(tmp_path, gw.base_url, model)

    kinds = [e["type"] for e in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds, events
    said = [e["item"]["text"] for e in events if e["type"] == "item.completed"
            and e["item"].get("type") == "agent_message"]  # fmt: skip
    assert said == [f"You said: {PROMPT}"]

    [upstream] = responses_requests(sim[region])
    assert not responses_requests(sim["eastus" if region == "sweden" else "sweden"])
    body = upstream["body"]
    assert body["model"] == model and body["stream"] is True
    assert upstream["headers"]["api-key"] == SIM_KEYS[0]
    assert GATEWAY_KEY not in json.dumps(upstream)
    reasoning = model == "o3-mini"
    if reasoning:  # a reasoning deployment keeps what Codex asks of it
        assert body["include"] == ["reasoning.encrypted_content"]
    else:  # gpt-4o would refuse these (the simulator does, as Azure): the gateway drops them
        assert upstream["path"] == "/openai/responses"
        assert upstream["query"].startswith("api-version=2025-")
        assert "reasoning" not in body and "reasoning.encrypted_content" not in body.get(
            "include", []
        )
    [done] = [e for e in events if e["type"] == "turn.completed"]
    inputs, outputs = expected_usage(body, reasoning)
    assert done["usage"]["input_tokens"] == inputs
    assert done["usage"]["output_tokens"] == outputs


# --- Chatbox's Responses provider ------------------------------------------------------------


def run_responses(*args: str) -> dict[str, Any]:
    node = require_node_clients()
    proc = subprocess.run(
        [node, "responses.mjs", *args], cwd=CLIENTS, capture_output=True, text=True, timeout=60
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"responses.mjs printed nothing (exit {proc.returncode}): {proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0, f"responses.mjs failed: {result} {proc.stderr}"
    return result


@pytest.mark.parametrize(
    ("model", "region", "stream"), [("gpt-4o", "sweden", True), ("o3-mini", "eastus", False)]
)
def test_chatbox_responses_provider_with_store_false(
    sim: dict[str, Sim], start_gateway: Any, model: str, region: str, stream: bool
) -> None:
    gw = start_gateway(base_config(sim))
    args = ["--base-url", gw.base_url, "--api-key", GATEWAY_KEY, "--model", model]
    out = run_responses(*args, "--prompt", PROMPT, *([] if stream else ["--no-stream"]))
    assert out["text"] == f"You said: {PROMPT}"
    assert out["finishReason"] == "stop"
    assert out["urls"] == [f"{gw.base_url}/responses"]
    [sent] = out["bodies"]
    assert sent["store"] is False and sent.get("stream", False) is stream

    [upstream] = responses_requests(sim[region])
    assert upstream["body"]["store"] is False
    inputs, outputs = expected_usage(upstream["body"], model == "o3-mini")
    assert out["usage"]["inputTokens"] == inputs
    assert out["usage"]["outputTokens"] == outputs
    # store: false -- nothing was kept, on Azure or in the gateway's affinity map
    got = httpx.get(
        f"{gw.base_url}/responses/{out['responseId']}", headers=gw.headers(), timeout=10
    )
    assert got.status_code == 404
