"""app/check.py through `aoai-gateway check`: URLs per deployment and operation, pasted
endpoints, the gateway-key table, warnings, and exit 2 when nothing could be served."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.check import warnings
from app.config import validate
from app.operations import OPERATIONS
from tests.test_cli import rows, run

PORTAL = "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions"


@pytest.mark.parametrize(
    ("endpoint", "url", "said"),
    [
        (
            PORTAL + "?api-version=2024-10-21",
            "https://x.openai.azure.com/openai/deployments/dep/chat/completions"
            "?api-version=2024-10-21",
            [
                "resources.r.endpoint is a pasted URL; the gateway uses https://x.openai.azure.com",
                "it names deployment gpt-4o",
                "api-version 2024-10-21 is used (api: legacy)",
                "/chat/completions is dropped",
            ],
        ),
        (
            "https://x.openai.azure.com/openai/v1/chat/completions",
            "https://x.openai.azure.com/openai/v1/chat/completions",
            ["/chat/completions is dropped"],
        ),
        (
            "https://x.openai.azure.com/openai/deployments/gpt-4o",
            "https://x.openai.azure.com/openai/v1/chat/completions",
            ["it names deployment gpt-4o"],
        ),
    ],
)
def test_pasted_portal_urls_give_the_exact_upstream_url_and_say_what_they_held(
    tmp_path: Path, endpoint: str, url: str, said: list[str]
) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        f'resources:\n  r: {{endpoint: "{endpoint}", keys: [k]}}\nmodels:\n  m: [r/dep]\n'
    )
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    by_operation = {r["OPERATION"]: r["URL"] for r in rows(result.stdout)}
    assert by_operation["chat"] == url
    assert set(by_operation) == {op.name for op in OPERATIONS}  # every operation served
    assert by_operation["embeddings"] == url.replace("chat/completions", "embeddings")
    (note,) = [ln for ln in result.stdout.splitlines() if ln.startswith("note: ")]
    for part in said:
        assert part in note


def test_an_endpoint_it_cannot_use_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        'resources:\n  r: {endpoint: "https://x.openai.azure.com/openai/models?x=1", keys: [k]}\n'
        "models:\n  m: [r/dep]\n"
    )
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "  - resources.r.endpoint: the path /openai/models is not an Azure OpenAI URL" in (
        result.stderr
    )
    assert "write just https://x.openai.azure.com" in result.stderr
    assert result.stdout == ""


def test_no_models_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("")
    result = run("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "warning: no models are configured" in result.stdout
    assert "check FAILED: the configuration has no models" in result.stderr


CONFIG = """
gateway:
  keys:
    - {name: alice, key: alice-secret-value, rpm: 10, budget: {usd: 50}}
    - {name: ops, key_sha256: OPS_DIGEST, admin: true, tpm: 5000}
    - {name: bot, key: bot-secret-value, models: [gpt4o, "gpt-4o*"],
       budget: {usd: 0.5, period: day}}
resources:
  eastus: {endpoint: "https://e.openai.azure.com", keys: [azure-secret-1]}
  sweden: {endpoint: "https://s.openai.azure.com", keys: [azure-secret-2]}
  westus: {endpoint: "https://w.openai.azure.com", keys: [azure-secret-3]}
models:
  gpt-4o: [eastus/gpt-4o, sweden/gpt-4o]
  gpt-4o-mini: [eastus/gpt-4o-mini]
""".replace("OPS_DIGEST", hashlib.sha256(b"ops-secret-value").hexdigest())


def test_keys_table_and_warnings(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(CONFIG)
    result = run(
        "check",
        "--config",
        str(path),
        "--host",
        "0.0.0.0",
        cwd=tmp_path,
        env={"AOAI_GATEWAY_KEY": "ignored-env-key"},
    )
    assert result.returncode == 0, result.stderr
    keys = rows(result.stdout, "KEY")
    assert keys == [
        {
            "KEY": "alice",
            "HASH-ID": hashlib.sha256(b"alice-secret-value").hexdigest()[:12],
            "ADMIN": "no",
            "RPM": "10",
            "TPM": "-",
            "BUDGET": "$50/month",
            "MODELS": "*",
        },
        {
            "KEY": "ops",
            "HASH-ID": hashlib.sha256(b"ops-secret-value").hexdigest()[:12],
            "ADMIN": "yes",
            "RPM": "-",
            "TPM": "5000",
            "BUDGET": "-",
            "MODELS": "*",
        },
        {
            "KEY": "bot",
            "HASH-ID": hashlib.sha256(b"bot-secret-value").hexdigest()[:12],
            "ADMIN": "no",
            "RPM": "-",
            "TPM": "-",
            "BUDGET": "$0.5/day",
            "MODELS": "gpt4o,gpt-4o*",
        },
    ]
    warnings = [ln for ln in result.stdout.splitlines() if ln.startswith("warning: ")]
    assert warnings == [
        "warning: gateway.keys[2] (bot): models pattern 'gpt4o' matches no model "
        "(the models are gpt-4o, gpt-4o-mini)",
        "warning: models.gpt-4o-mini: every deployment is on resource eastus; if it fails "
        "there is no other resource to fail over to",
        "warning: resources.westus: no model uses it",
        "warning: serving on 0.0.0.0: gateway key(s) bot have no rpm/tpm limit, so one caller "
        "can use all of the Azure quota",
        "warning: AOAI_GATEWAY_KEY is set but not used: it applies only when the configuration "
        "comes from AZURE_OPENAI_* variables (add it to gateway.keys)",
    ]
    everything = result.stdout + result.stderr
    for secret in ("alice-secret-value", "bot-secret-value", "azure-secret-1", "ignored-env-key"):
        assert secret not in everything
    assert hashlib.sha256(b"ops-secret-value").hexdigest() not in everything
    on_loopback = run("check", "--config", str(path), cwd=tmp_path)
    assert "no rpm/tpm limit" not in on_loopback.stdout  # only beyond loopback


def test_a_model_nothing_prices_is_warned_about() -> None:
    config = validate(
        {
            "resources": {"r": {"endpoint": "https://x.openai.azure.com", "keys": ["k"]}},
            "models": {
                "house": ["r/my-finetune"],
                "chat": ["r/gpt-4o"],  # the deployment's name is a priced model
                "ptu": ["r/o3-ptu"],
                "mine": ["r/mine"],
            },
            "pricing": {"r/o3-ptu": {"input": 0, "output": 0}, "mine": {"input": 1, "output": 1}},
        }
    )
    found = [w for w in warnings(config) if "no price" in w]
    assert found == [
        "models.house: no price for 'house' or its deployments' names; its cost shows as "
        "unpriced unless Azure's answers name a priced model (add it under pricing:)"
    ]
