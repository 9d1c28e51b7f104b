"""app/logs.py and the access log through the real server: text and JSON, one and two
workers; every route logged with time, method and path; failed upstream attempts named,
and repeated ones summarized."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.routing import key_id
from tests.conftest import GATEWAY_KEY, SIM_KEYS, base_config, free_port, wait_http

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
LIMITED = "test-gateway-key-limited"


def _requests(gw: Any) -> None:
    """One request of each kind, each with its own x-request-id."""

    def call(rid: str, method: str, path: str, key: str = GATEWAY_KEY, **kw: Any) -> int:
        headers = {"authorization": f"Bearer {key}", "x-request-id": rid}
        return httpx.request(method, gw.url + path, headers=headers, timeout=10, **kw).status_code

    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert call("t-chat", "POST", "/v1/chat/completions", json=chat) == 200
    refused = {**chat, "model": "o3-mini"}
    assert call("t-refused", "POST", "/v1/chat/completions", LIMITED, json=refused) == 403
    unknown = {**chat, "model": "no-such-model"}
    assert call("t-unknown-model", "POST", "/v1/chat/completions", json=unknown) == 404
    assert call("t-models", "GET", "/v1/models") == 200
    assert call("t-404", "GET", "/no/such/route") == 404
    assert call("t-405", "GET", "/v1/chat/completions") == 405
    assert call("t-status", "GET", "/status") == 403  # not an admin key
    assert call("t-admin", "GET", "/admin/usage") == 403


EXPECTED = {  # request id -> (status, method, path, model)
    "t-chat": (200, "POST", "/v1/chat/completions", "gpt-4o"),
    "t-refused": (403, "POST", "/v1/chat/completions", "o3-mini"),
    "t-unknown-model": (404, "POST", "/v1/chat/completions", "no-such-model"),
    "t-models": (200, "GET", "/v1/models", None),
    "t-404": (404, "GET", "/no/such/route", None),
    "t-405": (405, "GET", "/v1/chat/completions", None),
    "t-status": (403, "GET", "/status", None),
    "t-admin": (403, "GET", "/admin/usage", None),
}


def _config(sim: Any) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"]["keys"].append({"name": "limited", "key": LIMITED, "models": ["gpt-4o"]})
    return config


def _run(sim: Any, start_gateway: Any, fmt: str, workers: int) -> list[str]:
    gw = start_gateway(_config(sim), "--log-format", fmt, "--workers", str(workers), wait=False)
    wait_http(gw.url + "/healthz", gw.proc)
    _requests(gw)
    gw.stop(signal.SIGTERM)  # the access log is flushed at shutdown
    lines = [ln for ln in gw.logs().splitlines() if ln.strip()]
    assert "Traceback" not in gw.logs()
    for secret in (GATEWAY_KEY, LIMITED, *SIM_KEYS):
        assert secret not in gw.logs()
    return lines


def _check_json(lines: list[str]) -> None:
    entries = [json.loads(ln) for ln in lines]  # every line, the gateway's and uvicorn's too
    for e in entries:
        assert re.fullmatch(TIME, e["time"]), e
    own = [e for e in entries if "level" in e]
    assert any(e["level"] == "INFO" and e["message"].startswith("serving 3 models") for e in own), (
        own
    )
    assert any(e["level"] == "WARNING" and "configuration: " in e["message"] for e in own)
    access = {e["request_id"]: e for e in entries if "request_id" in e}
    for rid, (status, method, path, model) in EXPECTED.items():
        e = access[rid]
        assert (e["status"], e["method"], e["path"]) == (status, method, path), e
        if model is not None:
            assert e["model"] == model, e
    assert access["t-chat"]["key"] == "alice" and access["t-refused"]["key"] == "limited"


def _check_text(lines: list[str]) -> None:
    for ln in lines:
        assert re.match(TIME + " ", ln), ln  # one format on both streams
        assert not ln.startswith("{")
    assert any(re.match(TIME + r" INFO serving 3 models", ln) for ln in lines), lines
    assert any(re.match(TIME + r" WARNING configuration: ", ln) for ln in lines)
    by_id = {ln.rsplit(" id=", 1)[1]: ln for ln in lines if " id=t-" in ln}
    for rid, (status, method, path, model) in EXPECTED.items():
        ln = by_id[rid]
        assert re.match(f"{TIME} {status} {method} {re.escape(path)} ", ln), ln
        if model is not None:
            assert f" model={model} " in ln, ln


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_format_with_one_worker(sim: Any, start_gateway: Any, fmt: str) -> None:
    lines = _run(sim, start_gateway, fmt, 1)
    _check_json(lines) if fmt == "json" else _check_text(lines)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_format_with_two_workers(sim: Any, start_gateway: Any, fmt: str) -> None:
    lines = _run(sim, start_gateway, fmt, 2)
    _check_json(lines) if fmt == "json" else _check_text(lines)


def test_each_failed_attempt_is_one_warning_and_repeats_are_summarized(
    sim: Any, start_gateway: Any
) -> None:
    config = base_config(sim)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tls = sim["sweden"].url.replace("http://", "https://")  # TLS to a plain-HTTP port
    config["resources"]["dead"] = {"endpoint": dead, "keys": ["dead-key"]}
    config["resources"]["tls"] = {"endpoint": tls, "keys": ["tls-key"]}
    config["models"] = {
        "gpt-4o": ["sweden/gpt-4o", "eastus/gpt-4o"],
        "dead": ["dead/gpt-4o", "eastus/gpt-4o"],
        "tls": ["tls/gpt-4o", "eastus/gpt-4o"],
    }
    config["routing"] = {"cooldown": 0, "first_byte_timeout": 5}  # every request retries them
    sim["sweden"].fault("500")
    gw = start_gateway(config, "--log-format", "text")
    for model in ("gpt-4o", "dead", "tls"):
        for _ in range(4):
            r = httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                headers=gw.headers(),
                timeout=10,
            )
            assert r.status_code == 200, r.text
    gw.stop()
    failed = [ln for ln in gw.logs().splitlines() if "upstream attempt failed" in ln]
    sweden = f"resource sweden, deployment gpt-4o, key {key_id('sweden', SIM_KEYS[0])}: HTTP 500"
    assert [ln.split(" WARNING ")[1] for ln in failed if "resource sweden" in ln] == [
        f"upstream attempt failed: {sweden}",
        f"upstream attempt failed 3 more times in the last 30 s: {sweden}",
    ]
    (dead_line, dead_again) = [ln for ln in failed if "resource dead" in ln]
    assert f"key {key_id('dead', 'dead-key')}: connect error (cannot connect to" in dead_line
    assert "3 more times" in dead_again
    (tls_line, _) = [ln for ln in failed if "resource tls" in ln]
    assert ": TLS error (" in tls_line, tls_line
    for secret in ("dead-key", "tls-key", *SIM_KEYS):
        assert secret not in gw.logs()


def test_help_names_the_formats(tmp_path: Path) -> None:
    from tests.test_cli import run

    text = " ".join(run("serve", "--help", cwd=tmp_path).stdout.split())
    assert "(default: text when stderr is a terminal, else json)" in text


def test_keyless_refusals_are_logged_too(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim, gateway={}), "--log-format", "json", key=None)
    r = httpx.get(gw.url + "/v1/models", headers={"host": "evil.example", "x-request-id": "t-host"})
    assert r.status_code == 403
    gw.stop()
    (line,) = [json.loads(ln) for ln in gw.logs().splitlines() if '"t-host"' in ln]
    assert (line["status"], line["method"], line["path"]) == (403, "GET", "/v1/models")
