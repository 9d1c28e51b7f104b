"""Keyless mode stays on this machine (issue 10, items 1 and 6).

Reloads go through the start-up check: a configuration without keys is refused on
a non-loopback listener by SIGHUP, `--watch` and each worker of `--workers 2`, and
the old configuration keeps serving. These gateways listen on 0.0.0.0 *with* keys
throughout (the refused reload is the point), and are reached over loopback only.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import orjson
import pytest
import yaml

from app.config import validate
from app.loopback import exposure_error, is_loopback, keyless_refusal, loopback_host
from tests.conftest import GATEWAY_KEY, base_config, wait_for, wait_http

REFUSED = "refusing to serve on 0.0.0.0: no gateway.keys are configured"


def keyless(gw: Any) -> None:
    config = yaml.safe_load(gw.config_path.read_text())
    config["gateway"] = {}
    gw.write_config(config)


def assert_still_keyed(gw: Any) -> None:
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("GET", "/admin/usage"),
        ("GET", "/status"),
        ("GET", "/v1/models"),
    ):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.request(method, gw.url + path, json=body if method == "POST" else None)
        assert r.status_code == 401, (path, r.status_code, r.text)
    ok = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


def test_exposure_error_only_for_keyless_on_other_hosts() -> None:
    open_config = validate({"resources": {}, "models": {}})
    keyed = validate({"gateway": {"keys": [{"name": "a", "key": "k"}]}})
    assert exposure_error(open_config, "127.0.0.1") is None
    assert exposure_error(open_config, "::1") is None
    assert exposure_error(keyed, "0.0.0.0") is None
    refused = exposure_error(open_config, "0.0.0.0")
    assert refused is not None and refused.startswith(REFUSED)
    assert not is_loopback("0.0.0.0") and is_loopback("[::1]")


@pytest.mark.parametrize("how", ["sighup", "watch"])
def test_a_keyless_reload_on_a_public_listener_is_refused(
    sim: Any, start_gateway: Any, how: str
) -> None:
    args = ["--host", "0.0.0.0"] + (["--watch"] if how == "watch" else [])
    gw = start_gateway(base_config(sim), *args)
    if how == "watch":
        time.sleep(1.1)  # let the file's mtime move on
    keyless(gw)
    if how == "sighup":
        gw.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in gw.logs()), gw.logs()
    assert REFUSED in gw.logs()
    assert "configuration reloaded" not in gw.logs()
    assert_still_keyed(gw)


@pytest.mark.slow
def test_a_keyless_reload_is_refused_by_every_worker(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim), "--host", "0.0.0.0", "--workers", "2", wait=False)
    wait_http(gw.url + "/healthz", gw.proc)
    # /healthz answers once one worker is up; a worker still starting when the file turns
    # keyless would (rightly) refuse that configuration at its own start-up instead
    assert wait_for(lambda: gw.logs().count("Application startup complete") >= 2, timeout=60)
    keyless(gw)
    gw.send_signal(signal.SIGHUP)  # uvicorn's supervisor starts new workers on it
    assert wait_for(lambda: "aborting the restart" in gw.logs(), timeout=60), gw.logs()
    assert REFUSED in gw.logs()
    assert gw.proc.poll() is None
    for _ in range(6):  # both old workers still serve, with keys
        assert_still_keyed(gw)


# --- item 6: keyless mode answers this machine's own callers only -----------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (b"localhost", True),
        (b"LOCALHOST:8000", True),
        (b"127.0.0.1:1", True),
        (b"[::1]", True),
        (b"[::1]:443", True),
        (b"evil.example", False),
        (b"evil.example:8000", False),
        (b"localhost.evil.example", False),
        (b"127.0.0.1.nip.io", False),
        (b"localhost:", False),
        (b"localhost:80x", False),
        (b"127.0.0.2", False),
        (b"", False),
    ],
)
def test_loopback_host(host: bytes, ok: bool) -> None:
    assert loopback_host(host) is ok


def test_keyless_refusal_decides_on_host_and_content_type() -> None:
    local = [(b"host", b"localhost:8000")]
    assert keyless_refusal("GET", local) is None
    assert keyless_refusal("GET", []) is not None  # no Host at all
    for ctype in (b"application/json", b"application/json; charset=utf-8", b"Application/JSON"):
        assert keyless_refusal("POST", [*local, (b"content-type", ctype)]) is None
    for ctype in (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data"):
        refused = keyless_refusal("POST", [*local, (b"content-type", ctype)])
        assert refused is not None and refused.status == 415
    refused = keyless_refusal("POST", local)  # a Blob body without a type sends none
    assert refused is not None and refused.status == 415
    # an upload: multipart only with a credentials header (a cross-site form has none)
    upload = [*local, (b"content-type", b"multipart/form-data; boundary=x")]
    assert keyless_refusal("POST", upload) is not None
    for header in (b"authorization", b"api-key"):
        assert keyless_refusal("POST", [*upload, (header, b"anything")]) is None
    with_key = [*local, (b"authorization", b"Bearer x"), (b"content-type", b"text/plain")]
    assert keyless_refusal("POST", with_key) is not None  # only uploads are let through


def test_keyless_mode_refuses_foreign_hosts_and_non_json_posts(
    sim: Any, start_gateway: Any
) -> None:
    config = base_config(sim)
    config["gateway"] = {}
    gw = start_gateway(config, key=None)
    port = gw.port
    routes = [("POST", "/v1/chat/completions"), ("GET", "/admin/usage"), ("GET", "/status"),
              ("GET", "/v1/models"), ("GET", "/metrics")]  # fmt: skip
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for method, path in routes:
            body = orjson.dumps(CHAT) if method == "POST" else None
            json_type = {"content-type": "application/json"}
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
                r = client.request(method, path, content=body, headers={**json_type, "host": host})
                assert r.status_code == 200, (method, path, host, r.text)
            # DNS rebinding: a foreign name resolved to 127.0.0.1
            r = client.request(
                method, path, content=body, headers={**json_type, "host": f"evil.example:{port}"}
            )
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "host_not_allowed"
        # what a cross-site form or a text/plain fetch sends: no preflight, so refused
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"origin": "https://evil.example"}
            if ctype is not None:
                headers["content-type"] = ctype
            r = client.post("/v1/chat/completions", content=orjson.dumps(CHAT), headers=headers)
            assert r.status_code == 415, (ctype, r.text)
            error = r.json()["error"]
            assert error["code"] == "unsupported_media_type"
            assert set(error) == {"message", "type", "param", "code"}
    assert sim["eastus"].stats()["requests"] == 3  # only the three loopback chats went upstream


def test_a_keyed_gateway_does_not_check_host(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        content=orjson.dumps(CHAT),
        headers={**gw.headers(), "host": "gateway.example.com", "content-type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
