"""Shared fixtures: real processes on real ports.

`sims` starts two simulated Azure resources (`python -m app.simulator`) for the
session and resets them before each test. `start_gateway(config)` writes a YAML
file and runs `aoai-gateway serve` exactly as a user would, on a free port;
the process is stopped at the end of the test and its logs are kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_KEY = "test-gateway-key-alice"
SIM_KEYS = ("sim-key-1", "sim-key-2")

# Every process a test starts (`python -m app ...`, the `aoai-gateway` script) imports
# `app` from this checkout, not from wherever the package was installed in editable mode:
# a second worktree or a clean clone tests its own code.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `check` every 0.1 s until it is true (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Sim:
    """A simulated Azure resource in its own process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _post(self, path: str, body: dict[str, Any] | None = None) -> None:
        r = httpx.post(self.url + path, json=body or {}, timeout=5)
        r.raise_for_status()

    def fault(self, mode: str, **kw: Any) -> None:
        self._post("/_sim/faults", {"mode": mode, **kw})

    def revoke(self, key: str) -> None:
        self._post("/_sim/revoke", {"key": key})

    def reset(self) -> None:
        self._post("/_sim/reset")

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/_sim/stats", timeout=5).json())

    def requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.url + "/_sim/requests", timeout=5).json())


def start_sim(name: str, *args: str) -> Sim:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.simulator",
            "--port",
            str(port),
            "--region",
            name,
            "--keys",
            ",".join(SIM_KEYS),
            *args,
        ],
        cwd=ROOT,
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return Sim(name, port, proc)


@pytest.fixture(scope="session")
def sims() -> Iterator[dict[str, Sim]]:
    started = {name: start_sim(name) for name in ("eastus", "sweden")}
    yield started
    for sim in started.values():
        stop(sim.proc)


@pytest.fixture
def sim(sims: dict[str, Sim]) -> dict[str, Sim]:
    """The two session simulators, reset: no faults, no revoked keys, no stats."""
    for s in sims.values():
        s.reset()
    return sims


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    key: str | None = GATEWAY_KEY
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop(self.proc, sig)


def base_config(sims: dict[str, Sim], **over: Any) -> dict[str, Any]:
    """eastus speaks v1, sweden legacy; gpt-4o prefers sweden, then eastus."""
    config: dict[str, Any] = {
        "gateway": {"keys": [{"name": "alice", "key": GATEWAY_KEY}]},
        "resources": {
            "eastus": {"endpoint": sims["eastus"].url, "keys": list(SIM_KEYS), "api": "v1"},
            "sweden": {
                "endpoint": sims["sweden"].url + "/",
                "keys": list(SIM_KEYS),
                "api": "legacy",
                "api_version": "2024-10-21",
            },
        },
        "models": {
            "gpt-4o": [
                {"resource": "sweden", "deployment": "gpt-4o"},
                {"resource": "eastus", "deployment": "gpt-4o"},
            ],
            "gpt-4o-mini": ["eastus/gpt-4o-mini"],
            "o3-mini": ["eastus/o3-mini"],
        },
        "routing": {"first_byte_timeout": 5, "cooldown": 30},
    }
    for k, v in over.items():
        config[k] = v
    return config


def launch_gateway(
    where: Path,
    n: int,
    config: dict[str, Any] | None,
    *args: str,
    env: dict[str, str] | None = None,
    key: str | None = GATEWAY_KEY,
    wait: bool = True,
) -> Gateway:
    """`aoai-gateway serve` on a free port, with its config, usage db and log in `where`."""
    config_path = where / f"gateway-{n}.yaml"
    if config is not None:
        config = dict(config)
        config.setdefault("state", {"path": str(where / f"usage-{n}.db")})
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = where / f"gateway-{n}.log"
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config_path)]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_OPENAI_")}
    run_env.pop("AOAI_GATEWAY_CONFIG", None)
    run_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, *args], cwd=where, env=run_env, stdout=log, stderr=subprocess.STDOUT
        )
    gw = Gateway(port, proc, config_path, log_path, key=key)
    if wait:
        try:
            wait_http(gw.url + "/healthz", proc)
        except RuntimeError as exc:
            gw.stop()
            raise RuntimeError(f"{exc}\n--- gateway log ---\n{gw.logs()}") from None
    return gw


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: dict[str, Any] | None, *args: str, **kw: Any) -> Gateway:
        started.append(launch_gateway(tmp_path, len(started), config, *args, **kw))
        return started[-1]

    yield start
    for gw in started:
        with contextlib.suppress(Exception):
            gw.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
