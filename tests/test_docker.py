"""Dockerfile and docker-compose.yml, checked without a Docker engine.

`docker compose config` validates the compose file (Compose v2 plugin, else
Debian's `docker-compose`, which `.ci/run` installs); the rest asserts the
structure the README promises, and that the pieces agree with each other:
service names, ports, the demo configuration, the nginx upstream.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import load
from tests.conftest import ROOT, base_config

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
DEMO = ROOT / "deploy" / "demo"


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if os.environ.get("CI") == "true":
        pytest.fail(
            "neither `docker compose` nor `docker-compose` is installed (.ci/run installs it)"
        )
    pytest.skip("no docker compose here (apt-get install docker-compose)")


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("AOAI_", "COMPOSE_"))}
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), *args, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**run_env, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return list(yaml.safe_load(args))  # a JSON array is YAML


def test_compose_config_validates_with_two_replicas_a_load_balancer_and_redis() -> None:
    config = compose_config()
    services = config["services"]
    gateway, lb, redis = services["gateway"], services["lb"], services["redis"]

    assert gateway["deploy"]["replicas"] == 2
    assert gateway["image"] == "aoai-gateway:local" and "build" in gateway
    assert any(str(v).endswith(":/app/config:ro") for v in gateway["volumes"])
    assert str(ROOT / "deploy" / "demo") in str(gateway["volumes"])  # the default config dir
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in gateway  # reached through the load balancer only
    env = gateway["environment"]
    assert env["DEMO_GATEWAY_KEY"] and env["EASTUS_KEY1"]  # from deploy/demo/gateway.env

    assert lb["image"].startswith("nginx:")
    assert lb["depends_on"]["gateway"]["condition"] == "service_healthy"
    ports = str(lb["ports"])
    assert "127.0.0.1" in ports and "8000" in ports and "8080" in ports
    assert any(str(v).endswith("/etc/nginx/nginx.conf:ro") for v in lb["volumes"])

    assert redis["image"].startswith("redis:")
    assert "redis-cli" in redis["healthcheck"]["test"]

    for name in ("gateway", "lb", "redis"):
        assert not services[name].get("profiles"), f"{name} must run without a profile"
    for name in ("sim-eastus", "sim-sweden"):
        if name in services:  # Compose v2 lists only the services of active profiles
            assert services[name]["profiles"] == ["demo"]


def test_demo_profile_runs_the_simulators_the_default_config_points_at() -> None:
    services = compose_config("--profile", "demo")["services"]
    env = dict(
        line.split("=", 1)
        for line in (DEMO / "gateway.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    config = load(DEMO / "gateway.yaml", env)  # valid with exactly the variables compose passes
    assert config.gateway.keys and any(k.admin for k in config.gateway.keys)
    for name, resource in config.resources.items():
        host_port = resource.endpoint.removeprefix("http://")
        host, _, port = host_port.partition(":")
        sim = services[host]
        assert sim["profiles"] == ["demo"]
        command = (
            sim["command"] if isinstance(sim["command"], list) else shlex.split(sim["command"])
        )
        assert command[:3] == ["python", "-m", "app.simulator"]
        assert command[command.index("--port") + 1] == port
        assert command[command.index("--region") + 1] == name
        sim_keys = command[command.index("--keys") + 1].split(",")
        assert [k.get_secret_value() for k in resource.keys] == sim_keys
    assert config.state.redis_url == "redis://redis:6379/0"
    assert set(config.models) >= {"gpt-4o"} and len(config.models["gpt-4o"]) == 2


def test_own_config_dir_is_one_variable_away(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text("models: {}\n")
    (tmp_path / "gateway.env").write_text("AZURE_KEY=x\n")
    services = compose_config(env={"AOAI_CONFIG_DIR": str(tmp_path), "AOAI_PORT": "9999"})[
        "services"
    ]
    assert f"{tmp_path}:/app/config:ro" in services["gateway"]["volumes"]
    assert services["gateway"]["environment"] == {
        "AZURE_KEY": "x",
        # a configuration without state.redis_url still shares state between the replicas
        "AOAI_GATEWAY_REDIS_URL": "redis://redis:6379/0",
    }
    assert "redis" in services["gateway"]["depends_on"]
    assert "9999" in str(services["lb"]["ports"])


def test_dockerfile_is_slim_non_root_with_a_healthcheck_and_the_readme_commands() -> None:
    steps = instructions()
    words = [w for w, _ in steps]
    base = dict(steps)["FROM"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base

    user_at = words.index("USER")
    user = steps[user_at][1]
    assert user not in ("root", "0") and not user.startswith("0:")
    runs = " ".join(args for w, args in steps if w == "RUN")
    assert "useradd" in runs and user in runs  # a system user made for the purpose
    assert words.index("CMD") > user_at and words.index("HEALTHCHECK") > user_at

    # the README's commands: the lock file, pip install . then aoai-gateway serve --host 0.0.0.0
    each = [args for w, args in steps if w == "RUN"]
    locked = next(i for i, a in enumerate(each) if "-r requirements.lock" in a)
    assert "--require-hashes" in each[locked]
    built = next(i for i, a in enumerate(each) if re.search(r"(^|&& )pip install \.( |$)", a))
    assert locked < built and "--no-deps" in each[built]  # nothing resolved but the lock
    cmd = exec_form(dict(steps)["CMD"])
    assert cmd[:4] == ["aoai-gateway", "serve", "--host", "0.0.0.0"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme
    assert " ".join(cmd) in readme, "README's 'Running it' section must show the image's command"

    # the configuration lives in /app/config, read as config/gateway.yaml from /app
    workdirs = [args for w, args in steps if w == "WORKDIR"]
    assert workdirs[-1] == "/app" and "/app/config" in runs

    # HEALTHCHECK on /healthz with the Python in the image (no curl in a slim image)
    health = dict(steps)["HEALTHCHECK"]
    assert "CMD" in health and "/healthz" in health
    assert "curl" not in health and "wget" not in health
    port = cmd[cmd.index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in health
    assert f"EXPOSE {port}" in DOCKERFILE.read_text()

    # everything COPY'd exists and survives .dockerignore
    ignore = (ROOT / ".dockerignore").read_text()
    for w, args in steps:
        if w == "COPY":
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src.rstrip('/')}" in ignore.replace("/\n", "\n"), src


def _names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[\[<>=~! ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-")
        for r in requirements
    }


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))]
)
def test_lock_files_pin_every_dependency_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    """The lock files are current: regenerate them with the commands in their first lines
    (README, Upgrading) whenever pyproject.toml's dependencies change."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    for extra in extras:
        wanted |= _names(project["optional-dependencies"][extra])
    text = (ROOT / lock).read_text()
    assert "uv pip compile pyproject.toml" in text.splitlines()[1]
    pinned = {m.lower() for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.M)}
    pinned = {p.replace("_", "-") for p in pinned}
    assert wanted <= pinned, f"not in {lock}: {sorted(wanted - pinned)}"
    entries = re.split(r"^(?=[A-Za-z0-9])", text, flags=re.M)[1:]  # one per package
    assert len(entries) == len(pinned) and all("--hash=sha256:" in e for e in entries)


def test_healthcheck_command_works_against_a_running_gateway(sim: Any, start_gateway: Any) -> None:
    health = dict(instructions())["HEALTHCHECK"]
    command = exec_form(health[health.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    gw = start_gateway(base_config(sim))
    script = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{gw.port}")
    assert subprocess.run([sys.executable, "-c", script], timeout=30).returncode == 0
    gw.stop()
    down = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert down.returncode != 0


def test_nginx_balances_the_gateway_service_without_buffering_streams() -> None:
    conf = NGINX.read_text()
    compose = yaml.safe_load(COMPOSE.read_text())
    cmd = exec_form(dict(instructions())["CMD"])
    port = cmd[cmd.index("--port") + 1]
    assert re.search(rf"server gateway:{port}\b", conf)  # the compose service, every replica
    assert "gateway" in compose["services"]
    assert re.search(r"proxy_buffering\s+off;", conf)
    assert re.search(r"proxy_http_version\s+1\.1;", conf)
    listen = re.search(r"listen\s+(\d+);", conf)
    assert listen and f":{listen.group(1)}" in str(compose["services"]["lb"]["ports"])
    body = re.search(r"client_max_body_size\s+(\d+)m;", conf)
    assert body and int(body.group(1)) * 1024 * 1024 >= 26 * 1024 * 1024
