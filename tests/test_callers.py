"""Hostile callers against the real server (issue 10, the caller's side).

A real `aoai-gateway serve` process, the simulated Azure resources, and raw
sockets where an HTTP client would be too polite: bodies sent to a gateway
that has not authenticated the caller, heads that never end, trickles.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import GATEWAY_KEY, ROOT, Gateway, Sim, base_config, launch_gateway

CHAT_BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'

MB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw(port: int, data: bytes, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or the socket's timeout)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def chat_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- item 4: authenticate from the headers, before a byte of body ------------------------------


def test_unknown_caller_is_refused_before_its_body_is_read(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    for extra in ((), ("Authorization: Bearer wrong-key",)):
        # The head announces 9.5 MB and not one byte of it is sent: the answer must not wait.
        sock = raw(gw.port, chat_head(int(9.5 * MB), *extra), timeout=3)
        started = time.monotonic()
        answer = read_all(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"invalid_api_key"' in answer
        # read_all returns at the server's close: the body was neither awaited nor wanted.
        assert time.monotonic() - started < 2.5, "the gateway waited for the body"


def test_unauthenticated_huge_bodies_do_not_grow_memory(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    before = rss_kib(gw.proc.pid)
    body = b"x" * int(9.5 * MB)
    answers: list[bytes] = []

    def attack() -> None:
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
            sock.sendall(chat_head(len(body)))
            for start in range(0, len(body), 256 * 1024):
                sock.sendall(body[start : start + 256 * 1024])
        except OSError:
            pass  # refused and closed: that is the point
        try:
            answers.append(read_all(sock)[:12])
        except OSError:
            answers.append(b"reset")
        finally:
            sock.close()

    threads = [threading.Thread(target=attack) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    after = rss_kib(gw.proc.pid)
    # Before the fix every body was buffered whole: +360 MB for 40 x 9.5 MB.
    assert after - before < 40 * 1024, (before, after)
    assert len(answers) == 40
    assert set(answers) <= {b"HTTP/1.1 401", b"", b"reset"}, set(answers)
    assert b"HTTP/1.1 401" in answers


# --- item 8: the smaller ones -----------------------------------------------------------------

ADMIN_KEY = "test-admin-key-root"
LONG_ID = "r" * 10_000


@pytest.fixture(scope="module")
def gw8(sims: dict[str, Sim], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for item 8: an admin key, and /metrics behind it."""
    config = base_config(sims)
    config["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY},
            {"name": "root", "key": ADMIN_KEY, "admin": True},
        ],
        "metrics_auth": True,
    }
    gateway = launch_gateway(tmp_path_factory.mktemp("callers"), 0, config)
    yield gateway
    gateway.stop()


def chat(gw: Gateway, body: bytes, **headers: str | bytes) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={**gw.headers(), "content-type": "application/json", **headers},
        timeout=30,
    )


def nested(levels: int) -> bytes:
    """A chat request with a field nested `levels` deep (the object itself is level 1)."""
    inner = b"[" * (levels - 1) + b"]" * (levels - 1)
    return b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "x": ' + (
        inner + b"}"
    )


@pytest.mark.parametrize("levels", [255, 300, 1024, 1025, 5000])
def test_json_nested_too_deep_is_400_not_500(gw8: Gateway, levels: int) -> None:
    r = chat(gw8, nested(levels))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "nested" in error["message"] or "depth" in error["message"]


@pytest.mark.parametrize("route", ["/v1/responses", "/v1/embeddings", "/openai/v1/responses"])
def test_json_nested_too_deep_is_400_on_every_json_route(gw8: Gateway, route: str) -> None:
    r = httpx.post(
        gw8.url + route,
        content=nested(300),
        headers={**gw8.headers(), "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert "nested" in r.json()["error"]["message"]


def test_json_nested_254_levels_is_served(gw8: Gateway) -> None:
    assert chat(gw8, nested(254)).status_code == 200


def test_sane_request_ids_are_echoed_and_others_replaced(gw8: Gateway) -> None:
    sane = "req_01HZX3-abc.def:42"
    assert chat(gw8, CHAT_BODY, **{"x-request-id": sane}).headers["x-request-id"] == sane
    for bad in (LONG_ID.encode(), b'a b"c', b"x" * 129, "é".encode("latin-1")):
        for r in (
            chat(gw8, CHAT_BODY, **{"x-request-id": bad}),
            httpx.get(gw8.base_url + "/models", headers={**gw8.headers(), "x-request-id": bad}),
        ):
            rid = r.headers["x-request-id"]
            assert rid.encode() != bad and len(rid) == 24 and int(rid, 16) >= 0, rid


def test_trailing_slash_is_served_without_a_redirect(gw8: Gateway) -> None:
    for path, status in (("/v1/models/", 200), ("/healthz/", 200), ("/status/", 403)):
        r = httpx.get(
            gw8.url + path,
            headers={**gw8.headers(), "host": "evil.example"},
            follow_redirects=False,
        )
        assert r.status_code == status, (path, r.status_code, r.headers)
        assert "location" not in r.headers


def test_metrics_auth_requires_an_admin_key(gw8: Gateway) -> None:
    url = gw8.url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}).status_code == 403
    r = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200 and "aoai_gateway_requests_total" in r.text
    assert httpx.get(url, auth=("prometheus", ADMIN_KEY)).status_code == 200  # basic_auth


def test_metrics_are_open_by_default(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    assert httpx.get(gw.url + "/metrics").status_code == 200


def test_logs_hold_no_oversized_request_id_and_no_traceback(gw8: Gateway) -> None:
    """Last in the module: stops the gateway so the access log is flushed."""
    gw8.stop()
    logs = gw8.logs()
    assert '"request_id"' in logs  # the access log is there
    assert "r" * 129 not in logs
    assert "Traceback" not in logs


@pytest.mark.parametrize(
    ("where", "value"),
    [("gateway key", "good\r\nX-Evil: 1"), ("azure key", "k1\nInjected: yes"), ("tab", "k\tk")],
)
def test_control_characters_in_keys_are_configuration_errors(
    tmp_path: Path, where: str, value: str
) -> None:
    config: dict[str, Any] = {
        "gateway": {"keys": [{"name": "a", "key": "fine-key"}]},
        "resources": {"r": {"endpoint": "https://r.openai.azure.com", "keys": ["fine"]}},
        "models": {"m": ["r/d"]},
    }
    if where == "gateway key":
        config["gateway"]["keys"][0]["key"] = value
    else:
        config["resources"]["r"]["keys"] = [value]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("check", "serve"):
        done = run_cli(command, "--config", str(path))
        assert done.returncode == 2, done
        assert "control character" in done.stderr
        assert value not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr


def test_check_never_prints_an_endpoints_user_and_password(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "resources:\n"
        "  r: {endpoint: 'https://admin:s3cret-pw@r.openai.azure.com', keys: [k]}\n"
        "models:\n  m: [r/d]\n"
    )
    from_file = run_cli("check", "--config", str(path))
    from_env = run_cli(
        "check",
        env={
            "AZURE_OPENAI_ENDPOINT": "https://admin:s3cret-pw@r.openai.azure.com",
            "AZURE_OPENAI_API_KEY": "k",
            "AZURE_OPENAI_DEPLOYMENTS": "gpt-4o",
        },
    )
    for done in (from_file, from_env):
        assert done.returncode == 2, done
        assert "s3cret-pw" not in done.stdout + done.stderr
        assert "user name or password" in done.stderr


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI_", "AOAI_"))}
    run_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args, "--port", "1"] if args[0] == "serve"
        else [sys.executable, "-m", "app", *args],
        capture_output=True, text=True, env=run_env, timeout=60, cwd=ROOT,
    )  # fmt: skip
