"""`aoai-gateway check --probe` against the simulators: which paths really work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from app.config import validate
from app.probe import classify, plan
from tests.conftest import ROOT, SIM_KEYS, base_config


def run_probe(
    config: dict[str, Any], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "app", "check", "--probe", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def result_of(output: str, resource: str, deployment: str, key: str) -> str:
    """The RESULT column of one table row."""
    pattern = rf"^  {resource}\s+{deployment}\s+\S+(?: \S+)?\s+{key} \(\S+\)\s+(.+)$"
    found = re.findall(pattern, output, re.MULTILINE)
    assert len(found) == 1, (resource, deployment, key, output)
    return str(found[0])


def test_probe_finds_a_revoked_key_and_a_missing_deployment(sim: Any, tmp_path: Path) -> None:
    config = base_config(sim)
    config["models"]["ghost"] = ["eastus/no-such-deployment"]
    sim["sweden"].revoke("sim-key-1")

    done = run_probe(config, tmp_path)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr

    # a progress line per call, as it happens: sweden x1 deployment, eastus x4, two keys each
    progress = re.findall(r"^  \[\s*(\d+)/10\] (\S+) (key\d) \((\S+)\): (.+)$", out, re.MULTILINE)
    assert sorted(int(n) for n, *_ in progress) == list(range(1, 11))

    assert result_of(out, "sweden", "gpt-4o", "key1") == "key rejected (401)"
    assert result_of(out, "sweden", "gpt-4o", "key2").startswith("OK (")
    assert result_of(out, "eastus", "gpt-4o", "key1").startswith("OK (")
    for key in ("key1", "key2"):
        assert result_of(out, "eastus", "no-such-deployment", key) == "deployment not found (404)"
    assert "gpt-4o: 3 of 4 paths work" in out
    assert "ghost: NO WORKING PATH (2 tried)" in out
    assert "probe FAILED: no working path for ghost" in out
    for secret in SIM_KEYS:
        assert secret not in out and secret not in done.stderr

    # every path was called once per key, with a 1-token request in the resource's URL form
    sweden_calls = sim["sweden"].requests()
    assert len(sweden_calls) == 2
    assert {c["headers"]["api-key"] for c in sweden_calls} == set(SIM_KEYS)
    assert all(c["path"] == "/openai/deployments/gpt-4o/chat/completions" for c in sweden_calls)
    bodies = {c["body"]["model"]: c["body"] for c in sim["eastus"].requests()}
    assert bodies["gpt-4o"]["max_tokens"] == 1
    assert bodies["o3-mini"]["max_completion_tokens"] == 1 and "max_tokens" not in bodies["o3-mini"]


def test_probe_reports_throttled_timeout_and_errors(sim: Any, tmp_path: Path) -> None:
    config = base_config(sim)
    config["models"] = {
        "gpt-4o-mini": ["eastus/gpt-4o-mini"],
        "o3-mini": ["eastus/o3-mini"],
        "gpt-5.2-chat": ["eastus/gpt-5.2-chat"],
    }
    config["resources"]["eastus"]["keys"] = [SIM_KEYS[0]]
    east = sim["eastus"]
    east.fault("429", deployment="gpt-4o-mini", retry_after=7)
    east.fault("hang", deployment="o3-mini")
    east.fault("500", deployment="gpt-5.2-chat")

    done = run_probe(config, tmp_path, "--timeout", "1.5")
    out = done.stdout
    assert result_of(out, "eastus", "gpt-4o-mini", "key1") == "throttled (429, retry after 7 s)"
    assert result_of(out, "eastus", "o3-mini", "key1").startswith("timeout")
    assert (
        result_of(out, "eastus", "gpt-5.2-chat", "key1") == "error (HTTP 500: InternalServerError)"
    )
    # throttled still proves the key and the deployment: only o3-mini and gpt-5.2-chat are broken
    assert "probe FAILED: no working path for o3-mini, gpt-5.2-chat" in out
    assert done.returncode == 1


def test_probe_exits_0_when_every_model_has_a_working_path(sim: Any, tmp_path: Path) -> None:
    sim["eastus"].revoke("sim-key-2")  # one bad key leaves a working path
    done = run_probe(base_config(sim), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "probe OK: every model has a working path" in done.stdout
    assert "configuration OK" in done.stdout  # the routing table comes first


def test_probe_unreachable_resource_is_an_error_not_a_crash(tmp_path: Path) -> None:
    config = {
        "resources": {"down": {"endpoint": "http://127.0.0.1:9", "keys": ["k"]}},
        "models": {"gpt-4o": ["down/gpt-4o"]},
    }
    done = run_probe(config, tmp_path, "--timeout", "2")
    assert done.returncode == 1
    assert result_of(done.stdout, "down", "gpt-4o", "key1").startswith("error (connection")
    assert "Traceback" not in done.stderr


def test_plan_probes_each_deployment_url_once_per_key() -> None:
    config = validate(
        {
            "resources": {
                "r": {"endpoint": "https://r.openai.azure.com", "keys": ["secret-a", "secret-b"]}
            },
            "models": {
                "m1": ["r/d"],
                "m2": ["r/d", {"resource": "r", "deployment": "d", "api": "legacy"}],
            },
        }
    )
    probes = plan(config)
    assert [(p.deployment, p.form, p.key_label) for p in probes] == [
        ("d", "v1", "key1"),
        ("d", "v1", "key2"),
        ("d", "legacy 2024-10-21", "key1"),
        ("d", "legacy 2024-10-21", "key2"),
    ]
    assert probes[0].models == ("m1", "m2") and probes[2].models == ("m2",)
    assert "secret" not in repr(probes[0].key)


def test_classify() -> None:
    assert classify(200, b"{}", 0.1234, None) == ("ok", "OK (123 ms)")
    assert classify(401, b"", 0, None) == ("key_rejected", "key rejected (401)")
    assert classify(403, b"", 0, None)[0] == "key_rejected"
    dep = b'{"error":{"code":"DeploymentNotFound","message":"x"}}'
    assert classify(404, dep, 0, None) == ("not_found", "deployment not found (404)")
    other = classify(404, b'{"error":{"code":"404","message":"Resource not found"}}', 0, None)
    assert other[0] == "not_found" and "check the endpoint" in other[1]
    assert classify(429, b"", 0, 2.5) == ("throttled", "throttled (429, retry after 2.5 s)")
    assert classify(429, b"", 0, None) == ("throttled", "throttled (429)")
    assert classify(502, b"<html>", 0, None) == ("error", "error (HTTP 502)")
