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
import pytest
import yaml

from app.config import validate
from app.loopback import exposure_error, is_loopback
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
    wait_http(gw.url + "/healthz", gw.proc, timeout=60)  # two spawned workers: slow when loaded
    keyless(gw)
    gw.send_signal(signal.SIGHUP)  # uvicorn's supervisor starts new workers on it
    assert wait_for(lambda: "aborting the restart" in gw.logs(), timeout=60), gw.logs()
    assert REFUSED in gw.logs()
    assert gw.proc.poll() is None
    for _ in range(6):  # both old workers still serve, with keys
        assert_still_keyed(gw)
