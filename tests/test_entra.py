"""Keyless upstreams (issue 13): the real gateway, the real azure-identity library, the
openai SDK, and the simulator standing in for Microsoft Entra ID.

The managed-identity credential finds the simulator's token endpoint through
`IDENTITY_ENDPOINT` / `IDENTITY_HEADER` (App Service's protocol); the Azure CLI
credential runs a fake `az` put first on `PATH`. Every simulator accepts the tokens
any of them issued and answers 401 to others, as Azure does.
"""

from __future__ import annotations

import os
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme
import yaml

from tests.conftest import (
    GATEWAY_KEY,
    ROOT,
    SIM_KEYS,
    Gateway,
    Sim,
    free_port,
    stop,
    wait_for,
)
from tests.test_cli import run

IDENTITY_HEADER = "sim-identity-header"  # the simulator's default
CLIENT_ID = "11111111-2222-3333-4444-000000000abc"
SCOPE_RESOURCE = "https://cognitiveservices.azure.com"
ROLE_MISSING = "identity lacks a role on this resource: assign Cognitive Services OpenAI User"


def identity_env(sim: Sim) -> dict[str, str]:
    return {"IDENTITY_ENDPOINT": f"{sim.url}/msi/token", "IDENTITY_HEADER": IDENTITY_HEADER}


def entra(sim: Sim, **control: Any) -> None:
    httpx.post(sim.url + "/_sim/entra", json=control, timeout=5).raise_for_status()


def entra_stats(sim: Sim) -> dict[str, Any]:
    return dict(httpx.get(sim.url + "/_sim/entra", timeout=5).json())


def config(sims: dict[str, Sim], credential: dict[str, Any] | None = None) -> dict[str, Any]:
    """eastus authenticates with Entra ID, sweden with keys."""
    return {
        "gateway": {"keys": [{"name": "alice", "key": GATEWAY_KEY, "admin": True}]},
        "resources": {
            "eastus": {
                "endpoint": sims["eastus"].url,
                "auth": "entra",
                "entra": credential or {"credential": "managed_identity", "client_id": CLIENT_ID},
            },
            "sweden": {"endpoint": sims["sweden"].url, "keys": list(SIM_KEYS)},
        },
        "models": {
            "gpt-4o": ["eastus/gpt-4o"],  # Entra ID only
            "entra-first": ["eastus/gpt-4o-mini", "sweden/gpt-4o-mini"],
            "keys-first": ["sweden/gpt-4o", "eastus/gpt-4o"],
        },
        "routing": {"first_byte_timeout": 5, "cooldown": 30},
    }


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)


def ask(gw: Gateway, model: str) -> str:
    with client(gw) as c:
        answer = c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello there"}]
        )
    return answer.choices[0].message.content or ""


def bearers(sim: Sim) -> list[str]:
    """The Authorization headers the simulator received, newest last."""
    return [r["headers"].get("authorization", "") for r in sim.requests()]


def tokens_seen(*sims: Sim) -> set[str]:
    return {b[7:] for s in sims for b in bearers(s) if b.startswith("Bearer simtok.")}


def assert_no_token_in(tokens: set[str], *texts: str) -> None:
    assert tokens
    for text in texts:
        for token in tokens:
            assert token not in text


def test_managed_identity_token_is_sent_as_bearer_and_never_shown(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east = sim["eastus"]
    gw = start_gateway(config(sim), env=identity_env(east))
    assert ask(gw, "gpt-4o") == "You said: hello there"
    with client(gw) as c:
        stream = c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(k.choices[0].delta.content or "" for k in stream if k.choices)
    last = east.requests()[-1]["headers"]
    assert last["authorization"].startswith("Bearer simtok.") and "api-key" not in last
    stats = entra_stats(east)
    # fetched once at start-up, with App Service's protocol; requests never fetch one
    assert stats["issued"] == 1 and stats["accepted"] == 2
    (request,) = stats["token_requests"]
    assert request["identity_header_ok"]
    assert request["params"] == {
        "api-version": "2019-08-01",
        "resource": SCOPE_RESOURCE,
        "client_id": CLIENT_ID,
    }
    status = httpx.get(gw.url + "/status", headers=gw.headers(), timeout=5).text
    assert "entra token valid until" in status
    metrics = httpx.get(gw.url + "/metrics", headers=gw.headers(), timeout=5).text
    east.fault("echo", count=1)  # an upstream quoting the request's headers back
    with pytest.raises(openai.BadRequestError) as echoed:
        ask(gw, "gpt-4o")
    assert "[redacted]" in echoed.value.response.text
    tokens = tokens_seen(east)
    assert_no_token_in(tokens, gw.logs(), status, metrics, echoed.value.response.text)


def test_one_credential_is_shared_by_resources_with_the_same_settings(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east, sweden = sim["eastus"], sim["sweden"]
    cfg = config(sim)
    cfg["resources"]["sweden"] = dict(cfg["resources"]["eastus"], endpoint=sweden.url)
    gw = start_gateway(cfg, env=identity_env(east))
    assert ask(gw, "keys-first") and ask(gw, "gpt-4o")
    assert entra_stats(east)["issued"] == 1  # one token for both resources
    assert bearers(sweden)[-1] == bearers(east)[-1]


def test_keys_rejected_fail_over_to_the_entra_resource(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east, sweden = sim["eastus"], sim["sweden"]
    gw = start_gateway(config(sim), env=identity_env(east))
    for key in SIM_KEYS:
        sweden.revoke(key)
    assert ask(gw, "keys-first")
    assert [r["headers"].get("api-key") for r in sweden.requests()] == list(SIM_KEYS)
    assert bearers(east)[-1].startswith("Bearer simtok.")


def test_entra_rejected_fails_over_to_the_key_resource(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east, sweden = sim["eastus"], sim["sweden"]
    gw = start_gateway(config(sim), env=identity_env(east))
    entra(east, deny=True)  # the identity lacks a role on eastus
    assert ask(gw, "entra-first")  # one new token, one retry, then sweden's keys
    assert len(east.requests()) == 2
    assert sweden.requests()[-1]["headers"]["api-key"] == SIM_KEYS[0]
    assert ROLE_MISSING in gw.logs()
    assert entra_stats(east)["issued"] == 2
    with pytest.raises(openai.APIStatusError) as info:  # remembered: no second try on eastus
        ask(gw, "gpt-4o")
    assert info.value.status_code == 502
    assert "Cognitive Services OpenAI User" in info.value.message
    assert len(east.requests()) == 2


def test_a_401_gets_a_new_token_and_one_retry_on_the_same_resource(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east = sim["eastus"]
    gw = start_gateway(config(sim), env=identity_env(east))
    assert ask(gw, "gpt-4o")
    first = bearers(east)[-1]
    entra(east, revoke=True)  # Azure stops accepting the token the gateway holds
    assert ask(gw, "gpt-4o")
    tail = bearers(east)[-2:]
    assert tail[0] == first and tail[1] != first  # refused, then the new token
    assert entra_stats(east)["issued"] == 2
    assert "Entra ID token refused (HTTP 401); retrying once with a new token" in gw.logs()


@pytest.mark.slow
def test_short_lived_tokens_are_refreshed_in_the_background(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east = sim["eastus"]
    entra(east, ttl=6)  # refreshed half-way, unusable 2 s before expiry
    gw = start_gateway(config(sim), env=identity_env(east))
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:  # every request finds a valid token
        assert ask(gw, "gpt-4o")
        time.sleep(0.5)
    stats = entra_stats(east)
    assert stats["issued"] >= 3  # start-up, then about every 3 s
    assert len(set(bearers(east))) >= 3
    assert "HTTP 401" not in gw.logs()  # no request ever carried an expired token


@pytest.mark.slow
def test_token_endpoint_down_at_start_up_and_later(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east = sim["eastus"]
    entra(east, fail=-1)
    gw = start_gateway(config(sim), env=identity_env(east))
    logs = gw.logs()
    assert "could not get a token for resource eastus (managed identity" in logs
    assert "requests will not go to eastus until a token is obtained" in logs
    assert ask(gw, "entra-first")  # the key resource serves
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, "gpt-4o")
    assert info.value.status_code == 502 and "no Entra ID token" in info.value.message
    status = httpx.get(gw.url + "/status", headers=gw.headers(), timeout=5).text
    assert "entra: no token" in status and "last refresh error" in status

    entra(east, fail=0, ttl=6)  # back: the background retry (backing off) gets a token
    assert wait_for(lambda: bool(ask_ok(gw, "gpt-4o")), 20), "no service after the outage"

    entra(east, fail=-1)  # down again: the refresh due half-way fails
    assert wait_for(
        lambda: "last refresh error" in httpx.get(gw.url + "/status", headers=gw.headers()).text,
        6,
    ), "the failed refresh is not on the status page"
    time.sleep(4.5)  # the token is past its usable life
    with pytest.raises(openai.APIStatusError):
        ask(gw, "gpt-4o")
    assert ask(gw, "entra-first")
    assert sim["sweden"].requests()[-1]["headers"]["api-key"] == SIM_KEYS[0]
    entra(east, fail=0, ttl=3600)
    assert wait_for(lambda: bool(ask_ok(gw, "gpt-4o")), 20), "no service after the second outage"
    assert_no_token_in(tokens_seen(east), gw.logs())


def ask_ok(gw: Gateway, model: str) -> str | None:
    try:
        return ask(gw, model)
    except openai.APIStatusError:
        return None


def test_a_reload_that_switches_a_resource_to_entra_gets_its_token(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east = sim["eastus"]
    cfg = config(sim)
    entra_settings = cfg["resources"]["eastus"]
    cfg["resources"]["eastus"] = {"endpoint": east.url, "keys": list(SIM_KEYS)}
    gw = start_gateway(cfg, env=identity_env(east))
    assert ask(gw, "gpt-4o")
    assert east.requests()[-1]["headers"]["api-key"] == SIM_KEYS[0]
    assert entra_stats(east)["issued"] == 0  # no Entra resource, no credential
    written = yaml.safe_load(gw.config_path.read_text())
    written["resources"]["eastus"] = entra_settings
    gw.write_config(written)
    gw.send_signal(signal.SIGHUP)
    assert wait_for(lambda: entra_stats(east)["issued"] == 1), gw.logs()
    assert ask(gw, "gpt-4o")
    last = east.requests()[-1]["headers"]
    assert last["authorization"].startswith("Bearer simtok.") and "api-key" not in last


FAKE_AZ = """#!{python}
import datetime, json, sys, urllib.parse, urllib.request
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
resource = sys.argv[sys.argv.index("--resource") + 1]
query = urllib.parse.urlencode({{"api-version": "2019-08-01", "resource": resource}})
request = urllib.request.Request({url!r} + "?" + query, headers={{"X-IDENTITY-HEADER": {header!r}}})
body = json.load(urllib.request.urlopen(request))
expires = int(body["expires_on"])
print(json.dumps({{
    "accessToken": body["access_token"],
    "expiresOn": datetime.datetime.fromtimestamp(expires).strftime("%Y-%m-%d %H:%M:%S.%f"),
    "expires_on": expires,
    "subscription": "00000000-0000-0000-0000-000000000001",
    "tenant": "00000000-0000-0000-0000-000000000002",
    "tokenType": "Bearer",
}}))
"""


def test_azure_cli_credential_with_a_developers_az_login(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    east = sim["eastus"]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    az = bindir / "az"
    calls = tmp_path / "az-calls.txt"
    az.write_text(
        FAKE_AZ.format(
            python=sys.executable,
            log=str(calls),
            url=f"{east.url}/msi/token",
            header=IDENTITY_HEADER,
        )
    )
    az.chmod(az.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    gw = start_gateway(config(sim, {"credential": "azure_cli"}), env=env)
    assert ask(gw, "gpt-4o")
    assert bearers(east)[-1].startswith("Bearer simtok.")
    assert calls.read_text().splitlines() == [
        f"account get-access-token --output json --resource {SCOPE_RESOURCE}"
    ]
    assert_no_token_in(tokens_seen(east), gw.logs())


# --- check and check --probe ----------------------------------------------------------


def write(cfg: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_check_and_probe_report_the_credential_token_and_role(
    sim: dict[str, Sim], tmp_path: Path
) -> None:
    east = sim["eastus"]
    path = write(config(sim), tmp_path)
    env = identity_env(east)
    shown = run("check", "--config", str(path), cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "entra (managed identity, client id \u2026abc)" in shown.stdout
    assert entra_stats(east)["issued"] == 0  # check alone fetches nothing

    probed = run("check", "--probe", "--config", str(path), cwd=tmp_path, env=env)
    assert probed.returncode == 0, probed.stdout + probed.stderr
    assert "eastus: entra (managed identity, client id \u2026abc): token obtained" in probed.stdout
    assert "probe OK" in probed.stdout

    entra(east, deny=True)
    denied = run("check", "--probe", "--config", str(path), cwd=tmp_path, env=env)
    assert denied.returncode == 1
    assert f"{ROLE_MISSING} (401)" in denied.stdout
    assert "gpt-4o: NO WORKING PATH" in denied.stdout

    entra(east, deny=False, fail=-1)
    down = run("check", "--probe", "--config", str(path), cwd=tmp_path, env=env)
    assert down.returncode == 1
    assert "eastus: entra (managed identity, client id \u2026abc): NO TOKEN:" in down.stdout
    assert "no Entra ID token" in down.stdout
    outputs = [shown.stdout, probed.stdout, denied.stdout, down.stdout, down.stderr]
    assert_no_token_in(tokens_seen(east), *outputs)


def test_env_only_quick_start_with_entra(
    sim: dict[str, Sim], start_gateway: Callable[..., Gateway]
) -> None:
    east = sim["eastus"]
    env = {
        "AZURE_OPENAI_ENDPOINT": east.url,
        "AZURE_OPENAI_AUTH": "entra",
        "AZURE_OPENAI_DEPLOYMENTS": "gpt-4o",
        **identity_env(east),
    }
    gw = start_gateway(None, env=env)
    assert ask(gw, "gpt-4o")
    assert bearers(east)[-1].startswith("Bearer simtok.")


# --- credentials that talk to Entra ID's token endpoint -----------------------------------

TENANT = "00000000-0000-0000-0000-0000000000aa"
WORKLOAD_CLIENT = "00000000-0000-0000-0000-0000000000bb"
APP_CLIENT = "00000000-0000-0000-0000-0000000000cc"


def trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A simulator serving https (azure-identity refuses an http authority): its
    base URL, and the CA file that trusts it."""
    ca = trustme.CA()
    where = tmp_path_factory.mktemp("authority")
    cert, key, ca_file = where / "cert.pem", where / "key.pem", where / "ca.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "app.simulator", "--port", str(port)),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
        ],
        cwd=ROOT,
    )
    url = f"https://127.0.0.1:{port}"

    def up() -> bool:
        try:
            answer = httpx.get(url + "/healthz", verify=trusting(ca_file), timeout=1)
        except httpx.TransportError:
            return False
        return answer.status_code == 200

    try:
        assert wait_for(up, 15), "the https simulator did not start"
        yield url, ca_file
    finally:
        stop(proc)


def test_workload_identity_and_client_secret_against_entra_ids_token_endpoint(
    sim: dict[str, Sim],
    start_gateway: Callable[..., Gateway],
    authority: tuple[str, Path],
    tmp_path: Path,
) -> None:
    url, ca_file = authority
    federated = tmp_path / "federated-token"  # what AKS projects into a workload identity pod
    federated.write_text("a-federated-token-from-aks")
    cfg = config(sim, {"credential": "workload_identity"})
    cfg["resources"]["sweden"] = {
        "endpoint": sim["sweden"].url,
        "auth": "entra",
        "entra": {
            "credential": "client_secret",
            "tenant_id": TENANT,
            "client_id": APP_CLIENT,
            "client_secret": "${APP_SECRET}",
        },
    }
    env = {
        "AZURE_AUTHORITY_HOST": url,
        "SSL_CERT_FILE": str(ca_file),
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": WORKLOAD_CLIENT,
        "AZURE_FEDERATED_TOKEN_FILE": str(federated),
        "APP_SECRET": "the-app-registrations-secret",
    }
    gw = start_gateway(cfg, env=env)
    assert ask(gw, "gpt-4o")  # eastus, workload identity
    assert ask(gw, "keys-first")  # sweden, client secret
    for s in (sim["eastus"], sim["sweden"]):
        assert bearers(s)[-1].startswith("Bearer simtok.")
    seen = httpx.get(url + "/_sim/entra", verify=trusting(ca_file), timeout=5).json()
    by = {r["client_id"]: r for r in seen["token_requests"][-2:]}
    workload, app = by[WORKLOAD_CLIENT], by[APP_CLIENT]
    assert workload["with"] == "client_assertion" and app["with"] == "client_secret"
    assert workload["proof_sha256"] == sha256(b"a-federated-token-from-aks").hexdigest()
    assert app["proof_sha256"] == sha256(b"the-app-registrations-secret").hexdigest()
    for r in (workload, app):
        assert r["tenant"] == TENANT and r["grant_type"] == "client_credentials"
        assert r["scope"] == "https://cognitiveservices.azure.com/.default"
    assert "the-app-registrations-secret" not in gw.logs()
    assert_no_token_in(tokens_seen(sim["eastus"], sim["sweden"]), gw.logs())
