"""app/cli.py: `check` output, the serve safe default, `--help`, `hash-key`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.config import parse

SECRETS = {
    "ALICE_KEY": "alice-gw-Zq81xVALUE",
    "EAST_1": "east1-Kk93mVALUE",
    "EAST_2": "east2-Pp27nVALUE",
    "SWE_1": "swe1-Ww55rVALUE",
}
CONFIG = """
gateway:
  keys:
    - {name: alice, key: "${ALICE_KEY}"}
    - {name: bot, key_sha256: "BOT_DIGEST", models: [gpt-4o]}
resources:
  eastus:
    endpoint: https://contoso-eastus.openai.azure.com/openai/v1/
    keys: [${EAST_1}, "${EAST_2}"]
  sweden:
    endpoint: https://contoso-sweden.services.ai.azure.com
    keys: [${SWE_1}]
    api: legacy
    api_version: "2025-01-01-preview"
models:
  gpt-4o:
    - {resource: sweden, deployment: gpt4o-prod}
    - eastus/gpt-4o
  o3-mini:
    - {resource: eastus, deployment: o3-mini, api: legacy}
""".replace("BOT_DIGEST", hashlib.sha256(b"bot-key").hexdigest())


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_OPENAI_")}
    run_env.pop("AOAI_GATEWAY_CONFIG", None)
    run_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=run_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(stdout: str, first: str = "MODEL") -> list[dict[str, str]]:
    """The table whose header starts with `first`, up to the blank line after it."""
    lines = [ln.strip() for ln in stdout.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith(first))
    header = lines[start].split()
    block = []
    for ln in lines[start + 1 :]:
        if not ln:
            break
        block.append(dict(zip(header, ln.split(), strict=True)))
    return block


def test_check_prints_the_routing_table_and_no_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    result = run("check", "--config", str(path), cwd=tmp_path, env=SECRETS)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"configuration OK: {path}" in out
    assert "2 resources, 2 models, 2 gateway keys" in out
    every = rows(out)
    # one row per operation the gateway serves, each with its exact upstream URL
    operations = ["chat", "responses", "embeddings", "images", "images_edits"]
    operations += ["transcriptions", "translations", "speech"]
    assert [r["OPERATION"] for r in every] == operations * 3
    urls = {(r["RESOURCE"], r["DEPLOYMENT"], r["OPERATION"]): r["URL"] for r in every}
    assert urls[("eastus", "gpt-4o", "responses")] == (
        "https://contoso-eastus.openai.azure.com/openai/v1/responses"
    )
    assert urls[("sweden", "gpt4o-prod", "embeddings")] == (
        "https://contoso-sweden.services.ai.azure.com/openai/deployments/gpt4o-prod/"
        "embeddings?api-version=2025-01-01-preview"
    )
    # images and audio: v1 in preview; legacy at least 2025-04-01-preview (2025-01-01 is older)
    assert urls[("eastus", "gpt-4o", "images")] == (
        "https://contoso-eastus.openai.azure.com/openai/v1/images/generations?api-version=preview"
    )
    assert urls[("sweden", "gpt4o-prod", "speech")] == (
        "https://contoso-sweden.services.ai.azure.com/openai/deployments/gpt4o-prod/"
        "audio/speech?api-version=2025-04-01-preview"
    )
    assert urls[("sweden", "gpt4o-prod", "responses")].startswith(
        "https://contoso-sweden.services.ai.azure.com/openai/responses?api-version="
    )
    table = [r for r in every if r["OPERATION"] == "chat"]
    assert [(r["MODEL"], r["RESOURCE"], r["DEPLOYMENT"]) for r in table] == [
        ("gpt-4o", "sweden", "gpt4o-prod"),
        ("gpt-4o", "eastus", "gpt-4o"),
        ("o3-mini", "eastus", "o3-mini"),
    ]
    sweden, eastus, o3 = table
    assert (sweden["FORM"], sweden["API-VERSION"], sweden["KEYS"]) == (
        "legacy",
        "2025-01-01-preview",
        "1",
    )
    assert sweden["URL"] == (
        "https://contoso-sweden.services.ai.azure.com/openai/deployments/gpt4o-prod/"
        "chat/completions?api-version=2025-01-01-preview"
    )
    assert (eastus["FORM"], eastus["API-VERSION"], eastus["KEYS"]) == ("v1", "-", "2")
    assert eastus["URL"] == "https://contoso-eastus.openai.azure.com/openai/v1/chat/completions"
    assert (o3["FORM"], o3["API-VERSION"], o3["REASONING"]) == ("legacy", "2024-10-21", "yes")
    everything = result.stdout + result.stderr
    for value in SECRETS.values():
        assert value not in everything
    assert "bot-key" not in everything
    assert hashlib.sha256(b"bot-key").hexdigest() not in everything


def test_describe_never_shows_a_key() -> None:
    config = parse(CONFIG, SECRETS)
    text = cli.describe(config, "somewhere.yaml")
    assert text.startswith("configuration OK: somewhere.yaml")
    for value in SECRETS.values():
        assert value not in text


def test_describe_without_gateway_keys_says_loopback_only() -> None:
    config = parse("resources:" + CONFIG.split("resources:")[1], SECRETS)
    assert "no gateway keys (serves loopback only)" in cli.describe(config, "x")


def test_describe_grammar_for_one_of_each() -> None:
    text = """
gateway:
  keys: [{name: a, key: k}]
resources:
  r: {endpoint: "https://r", keys: [k]}
models:
  m: [r/d]
"""
    assert "1 resource, 1 model, 1 gateway key\n" in cli.describe(parse(text, {}), "x")


def test_check_errors_never_echo_key_values(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        CONFIG.replace("api: legacy\n    api_version", "api: legacee\n    api_version").replace(
            '{name: alice, key: "${ALICE_KEY}"}', '{name: alice, key: "${ALICE_KEY}", modles: []}'
        )
    )
    result = run("check", "--config", str(path), cwd=tmp_path, env=SECRETS)
    assert result.returncode == 2
    assert "gateway.keys[0].modles: unknown key" in result.stderr
    assert "resources.sweden.api: " in result.stderr
    for value in SECRETS.values():
        assert value not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# --- serve: the safe default ---------------------------------------------------------

OPEN_CONFIG = """
resources:
  r: {endpoint: "https://r.openai.azure.com", keys: [k]}
models:
  m: [r/d]
"""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gateway.example.com"])
def test_serve_without_keys_refuses_other_hosts(tmp_path: Path, host: str) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(OPEN_CONFIG)
    result = run("serve", "--config", str(path), "--host", host, "--port", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert f"refusing to serve on {host}" in result.stderr
    assert "Add gateway.keys" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert cli.is_loopback(host) is loopback


def serve_in_process(
    monkeypatch: pytest.MonkeyPatch, config_text: str, host: str, tmp_path: Path
) -> tuple[int, list[dict[str, Any]]]:
    """Run `serve` up to the point where uvicorn would bind, and capture that call."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def fake_run(app: Any, **kw: Any) -> None:
        calls.append({"app": app, **kw})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(cli, "setup_logging", lambda *a: None)
    path = tmp_path / "g.yaml"
    path.write_text(config_text)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--config", str(path), "--host", host, "--port", "8123"])
    assert isinstance(info.value.code, int)
    return info.value.code, calls


def test_serve_with_keys_may_use_any_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_keys = "gateway:\n  keys: [{name: a, key: k}]\n" + OPEN_CONFIG
    code, calls = serve_in_process(monkeypatch, with_keys, "0.0.0.0", tmp_path)
    assert code == 0
    assert len(calls) == 1
    assert (calls[0]["host"], calls[0]["port"]) == ("0.0.0.0", 8123)


def test_serve_without_keys_on_loopback_is_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, calls = serve_in_process(monkeypatch, OPEN_CONFIG, "127.0.0.1", tmp_path)
    assert code == 0 and len(calls) == 1


def test_serve_refusal_in_process_does_not_bind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, calls = serve_in_process(monkeypatch, OPEN_CONFIG, "0.0.0.0", tmp_path)
    assert code == 2 and calls == []
    assert "Add gateway.keys" in capsys.readouterr().err


# --- entry points ------------------------------------------------------------------------


def test_python_m_app_help(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: aoai-gateway" in result.stdout
    for command in ("serve", "check", "hash-key"):
        assert command in result.stdout


def test_help_shows_defaults_and_every_option_has_help(tmp_path: Path) -> None:
    top = cli.parser()
    for name, sub in top._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    serve = " ".join(run("serve", "--help", cwd=tmp_path).stdout.split())
    assert "--host HOST" in serve and "(default: 127.0.0.1)" in serve
    assert "(default: 8000)" in serve and "(default: 30.0)" in serve
    assert "--env-file PATH" in serve and "--log-format {text,json}" in serve
    check = " ".join(run("check", "--help", cwd=tmp_path).stdout.split())
    assert "(default: 20.0)" in check and "--env-file PATH" in check


def test_console_script_hash_key(tmp_path: Path) -> None:
    script = shutil.which("aoai-gateway") or str(Path(sys.executable).parent / "aoai-gateway")
    result = subprocess.run(
        [script, "hash-key", "abc"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.sha256(b"abc").hexdigest()


def test_hash_key_from_stdin_and_empty(tmp_path: Path) -> None:
    result = run("hash-key", cwd=tmp_path, stdin="from-stdin\n")
    assert result.stdout.strip() == hashlib.sha256(b"from-stdin").hexdigest()
    result = run("hash-key", cwd=tmp_path, stdin="")
    assert result.returncode == 2
    assert "give the key" in result.stderr


def test_hashed_key_is_accepted_by_the_config(tmp_path: Path) -> None:
    digest = run("hash-key", "s3cret", cwd=tmp_path).stdout.strip()
    config = parse(f'gateway:\n  keys:\n    - {{name: a, key_sha256: "{digest}"}}\n', {})
    from app.auth import KeyTable

    assert KeyTable(config.gateway.keys).authenticate("s3cret", None).name == "a"
