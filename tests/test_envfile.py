"""app/envfile.py: `--env-file` for `serve` and `check`, the file Docker users already have."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from app.config import ConfigError
from app.envfile import load_env_file, parse_env
from tests.conftest import ROOT, SIM_KEYS, base_config
from tests.test_cli import run


def test_parse_env_lines_comments_export_and_quotes() -> None:
    text = "# keys\n\nA=1\nexport B = two words \nC='quoted # not a comment'\nD=\"x\"\nE=\n"
    assert parse_env(text, "f") == {
        "A": "1",
        "B": "two words",
        "C": "quoted # not a comment",
        "D": "x",
        "E": "",
    }


def test_every_malformed_line_is_named_and_no_value_is_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_env("GOOD=1\njust-a-secret-value\n1BAD=x\n", "gateway.env")
    assert info.value.errors == [
        "line 2: expected NAME=VALUE (a variable name, then '=')",
        "line 3: expected NAME=VALUE (a variable name, then '=')",
    ]
    assert "just-a-secret-value" not in info.value.render()


def test_variables_already_set_win(tmp_path: Path) -> None:
    path = tmp_path / "gateway.env"
    path.write_text("A=from-file\nB=from-file\n")
    environ = {"A": "already"}
    assert load_env_file(path, environ) == ["B"]
    assert environ == {"A": "already", "B": "from-file"}
    with pytest.raises(ConfigError, match="cannot read"):
        load_env_file(tmp_path / "missing.env", environ)


CONFIG = """
gateway:
  keys: [{name: alice, key: "${GW_KEY}"}]
resources:
  r: {endpoint: "https://r.openai.azure.com", keys: ["${R_KEY}"]}
models:
  m: [r/d]
"""


def test_check_reads_the_env_file_and_set_variables_win(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(CONFIG)
    (tmp_path / "gateway.env").write_text("# secrets\nGW_KEY=gw-from-file\nR_KEY=r-from-file\n")
    args = ("check", "--config", "g.yaml", "--env-file", "gateway.env")
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "r-from-file" not in result.stdout and "gw-from-file" not in result.stdout
    without = run("check", "--config", "g.yaml", cwd=tmp_path)
    assert without.returncode == 2 and "GW_KEY is not set (gateway.keys[0].key)" in without.stderr
    (tmp_path / "gateway.env").write_text("GW_KEY=x\nnot a line\n")
    bad = run(*args, cwd=tmp_path, env={"R_KEY": "set"})
    assert bad.returncode == 2
    assert "gateway.env" in bad.stderr and "line 2: expected NAME=VALUE" in bad.stderr


def test_serve_reads_the_env_file(sim: Any, start_gateway: Any, tmp_path: Path) -> None:
    config = base_config(sim)
    config["gateway"] = {"keys": [{"name": "alice", "key": "${GW_KEY}"}]}
    config["resources"]["sweden"]["keys"] = ["${SWEDEN_KEY1}"]
    env_file = tmp_path / "gateway.env"
    env_file.write_text(f"GW_KEY=from-the-env-file\nSWEDEN_KEY1={SIM_KEYS[0]}\n")
    gw = start_gateway(
        config,
        "--env-file",
        str(env_file),
        env={"GW_KEY": "set-in-the-shell"},  # already set: wins over the file
        key="set-in-the-shell",
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key="set-in-the-shell", max_retries=0)
    done = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "e"}]
    )
    assert done.choices[0].message.content == "You said: e"
    assert sim["sweden"].requests()[-1]["headers"]["api-key"] == SIM_KEYS[0]
    refused = openai.OpenAI(base_url=gw.base_url, api_key="from-the-env-file", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        refused.models.list()


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("config/gateway.yaml", True),
        ("config/gateway.env", True),
        ("usage.db", True),
        ("deploy/demo/gateway.env", False),  # the demo's, not a secret: kept in git
        ("config/example.yaml", False),
    ],
)
def test_gitignore_keeps_the_operators_secrets_out_of_git(path: str, ignored: bool) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, timeout=30)
    assert (done.returncode == 0) is ignored
