"""`aoai-gateway serve` with no config file: the classic single resource from AZURE_OPENAI_*."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, SIM_KEYS


def quickstart_env(sim_url: str, **extra: str) -> dict[str, str]:
    return {
        "AZURE_OPENAI_ENDPOINT": sim_url,
        "AZURE_OPENAI_API_KEY": SIM_KEYS[0],
        "AZURE_OPENAI_DEPLOYMENTS": "gpt-4o, gpt-4o-mini",
        **extra,
    }


def chat(base_url: str, model: str, stream: bool) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0)
    ask = [{"role": "user", "content": "env only"}]
    if stream:
        chunks = client.chat.completions.create(model=model, messages=ask, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    done = client.chat.completions.create(model=model, messages=ask)
    return done.choices[0].message.content or ""


def test_api_version_set_serves_a_legacy_resource(sim: Any, start_gateway: Any) -> None:
    east = sim["eastus"]
    env = quickstart_env(east.url + "/", AZURE_OPENAI_API_VERSION="2025-01-01-preview")
    gw = start_gateway(None, env=env, key=None)  # no --config, no config/gateway.yaml in cwd

    assert sorted(m["id"] for m in httpx.get(gw.base_url + "/models").json()["data"]) == [
        "gpt-4o",
        "gpt-4o-mini",
    ]
    for stream in (False, True):
        assert chat(gw.base_url, "gpt-4o-mini", stream) == "You said: env only"
        last = east.requests()[-1]
        assert last["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"
        assert last["query"] == "api-version=2025-01-01-preview"
        assert last["headers"]["api-key"] == SIM_KEYS[0]
    assert SIM_KEYS[0] not in gw.logs()


def test_api_version_absent_serves_a_v1_resource_with_key2_as_backup(
    sim: Any, start_gateway: Any
) -> None:
    sweden = sim["sweden"]
    env = quickstart_env(sweden.url + "/openai/v1", AZURE_OPENAI_API_KEY_2=SIM_KEYS[1])
    gw = start_gateway(None, env=env, key=None)

    for stream in (False, True):
        assert chat(gw.base_url, "gpt-4o", stream) == "You said: env only"
        last = sweden.requests()[-1]
        assert last["path"] == "/openai/v1/chat/completions"
        assert last["query"] == ""
        assert last["body"]["model"] == "gpt-4o"
    sweden.revoke(SIM_KEYS[0])
    assert chat(gw.base_url, "gpt-4o", stream=True) == "You said: env only"
    assert sweden.requests()[-1]["headers"]["api-key"] == SIM_KEYS[1]
    logs = gw.logs()
    assert SIM_KEYS[0] not in logs and SIM_KEYS[1] not in logs


def test_a_config_file_in_the_directory_wins_over_the_environment(
    sim: Any, start_gateway: Any, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.yaml").write_text(
        f"resources:\n  east: {{endpoint: '{sim['eastus'].url}', keys: [{SIM_KEYS[0]}]}}\n"
        "models:\n  from-file: [east/gpt-4o]\n"
        f"state: {{path: '{tmp_path / 'usage.db'}'}}\n"
    )
    gw = start_gateway(None, env=quickstart_env(sim["eastus"].url), key=None)
    assert [m["id"] for m in httpx.get(gw.base_url + "/models").json()["data"]] == ["from-file"]


def test_aoai_gateway_key_serves_beyond_loopback_from_a_pasted_portal_url(
    sim: Any, start_gateway: Any
) -> None:
    east = sim["eastus"]
    portal = east.url + "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    env = {
        "AZURE_OPENAI_ENDPOINT": portal,  # no AZURE_OPENAI_DEPLOYMENTS: the URL names one
        "AZURE_OPENAI_API_KEY": SIM_KEYS[0],
        "AOAI_GATEWAY_KEY": "env-only-gateway-key",
    }
    gw = start_gateway(None, "--host", "0.0.0.0", env=env, key="env-only-gateway-key")
    assert httpx.get(gw.base_url + "/models").status_code == 401  # the key is required
    client = openai.OpenAI(base_url=gw.base_url, api_key="env-only-gateway-key", max_retries=0)
    done = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    )
    assert done.choices[0].message.content == "You said: x"
    last = east.requests()[-1]
    assert (last["path"], last["query"]) == (
        "/openai/deployments/gpt-4o/chat/completions",
        "api-version=2024-10-21",
    )
    assert "env-only-gateway-key" not in gw.logs()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY and AZURE_OPENAI_DEPLOYMENTS"),
        (
            {
                "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com",
                "AZURE_OPENAI_DEPLOYMENTS": "a",
            },
            "AZURE_OPENAI_API_KEY is not set",
        ),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"},
            "AZURE_OPENAI_DEPLOYMENTS is not set",
        ),
        (
            {"AZURE_OPENAI_API_KEY": "k", "AZURE_OPENAI_DEPLOYMENTS": "a"},
            "AZURE_OPENAI_ENDPOINT is not set",
        ),
        (
            {"AOAI_GATEWAY_KEY": "g"},
            "AZURE_OPENAI_ENDPOINT is not set",
        ),
    ],
)
def test_incomplete_environment_exits_2_with_one_line_per_problem(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI_", "AOAI_"))}
    run_env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        cwd=tmp_path,
        env={**run_env, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
