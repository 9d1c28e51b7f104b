"""`app.upstream_auth`: keys and Entra ID tokens behind one `headers` interface.

The token sources run here against a scripted stand-in for an azure-identity
credential (same `get_token_info` / `close` surface); the real library against
the simulator's identity endpoint is in `tests/test_entra.py`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.config import Config, Entra
from app.upstream_auth import (
    REFRESH_MARGIN,
    Credentials,
    EntraKey,
    TokenSource,
    UpstreamKey,
    describe,
    describe_settings,
    make_credential,
    refresh_at,
    resource_keys,
    retry_delay,
    short_error,
)

pytestmark = pytest.mark.anyio


@dataclass
class Info:
    token: str
    expires_on: int
    refresh_on: int | None = None


class Script:
    """What every credential made by `factory` answers, in order; shared state."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.issued = 0
        self.made = 0
        self.closed = 0
        self.fail: Exception | None = None
        self.calls = 0

    def factory(self, settings: Entra) -> FakeCredential:
        self.made += 1
        return FakeCredential(self)


class FakeCredential:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.cached: Info | None = None

    async def get_token_info(self, *scopes: str) -> Info:
        s = self.script
        s.calls += 1
        assert scopes == ("https://cognitiveservices.azure.com/.default",)
        if s.fail is not None:
            raise s.fail
        if self.cached is None:  # like azure-identity: a cache per credential instance
            s.issued += 1
            self.cached = Info(f"tok-{s.issued}", int(time.time()) + s.lifetime)
        return self.cached

    async def close(self) -> None:
        self.script.closed += 1


def config(resources: dict[str, Any]) -> Config:
    return Config.model_validate({"resources": resources})


# --- pure decisions ----------------------------------------------------------------


def test_refresh_at_margin_third_of_short_lifetimes_and_refresh_on() -> None:
    assert refresh_at(0, 3600, None) == 3600 - REFRESH_MARGIN
    assert refresh_at(0, 9, None) == 4.5  # a short-lived token: half-way
    assert refresh_at(0, 86400, 43200) == 43200  # the credential's recommendation
    assert refresh_at(0, 3600, 7200) == 3600 - REFRESH_MARGIN  # later than the margin: ignored


def test_retry_delay_backs_off_to_a_minute() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 7, 20)] == [1, 2, 4, 8, 60, 60]


def test_short_error_is_one_bounded_line() -> None:
    assert short_error(ValueError("first line\nsecond")) == "first line"
    assert short_error(TimeoutError()) == "TimeoutError"
    assert len(short_error(RuntimeError("x" * 1000))) == 300


def test_describe_names_the_credential_never_a_secret() -> None:
    c = config(
        {
            "k": {"endpoint": "https://k", "keys": ["s1", "s2"]},
            "mi": {
                "endpoint": "https://mi",
                "auth": "entra",
                "entra": {"credential": "managed_identity", "client_id": "0000-1111-2abc"},
            },
            "sp": {
                "endpoint": "https://sp",
                "auth": "entra",
                "entra": {
                    "credential": "client_secret",
                    "client_id": "cid-xyz",
                    "tenant_id": "tenant-789",
                    "client_secret": "TOPSECRET",
                    "scope": "https://ai.azure.com/.default",
                },
            },
            "dflt": {"endpoint": "https://d", "auth": "entra"},
        }
    )
    r = {name: resource_keys(name, res) for name, res in c.resources.items()}
    assert describe(r["k"]) == "2"
    assert describe(r["mi"]) == "entra (managed identity, client id \u2026abc)"
    sp = describe(r["sp"])
    assert sp == (
        "entra (client secret, client id \u2026xyz, tenant \u2026789, "
        "scope https://ai.azure.com/.default)"
    )
    assert "TOPSECRET" not in sp
    assert describe(r["dflt"]) == "entra (default credential chain)"
    assert describe_settings(Entra(credential="azure_cli")) == "Azure CLI"


def test_key_headers_are_built_once_and_entra_keys_start_without_a_token() -> None:
    c = config(
        {
            "k": {"endpoint": "https://k", "keys": ["s1"]},
            "e": {"endpoint": "https://e", "auth": "entra"},
        }
    )
    (key,) = resource_keys("k", c.resources["k"])
    assert isinstance(key, UpstreamKey) and not key.entra
    assert key.headers == {"api-key": "s1", "content-type": "application/json"}
    assert key.headers is key.headers  # no work per request
    (ek,) = resource_keys("e", c.resources["e"])
    assert isinstance(ek, EntraKey) and ek.entra and ek.id == "e#entra"
    assert ek.headers is None  # unbound (check without --probe): no token


# --- token sources -------------------------------------------------------------------


async def test_one_source_per_distinct_settings_shared_by_resources() -> None:
    script = Script()
    creds = Credentials(script.factory)
    mi = {"credential": "managed_identity", "client_id": "abc"}
    keys = creds.bind(
        config(
            {
                "a": {"endpoint": "https://a", "auth": "entra", "entra": mi},
                "b": {"endpoint": "https://b", "auth": "entra", "entra": mi},
                "c": {"endpoint": "https://c", "auth": "entra"},
                "k": {"endpoint": "https://k", "keys": ["x"]},
            }
        )
    )
    try:
        assert set(keys) == {"a", "b", "c"}
        assert keys["a"].source is keys["b"].source is not keys["c"].source
        await creds.start()
        assert script.made == 2 and script.issued == 2  # one token per credential
        headers = keys["a"].headers
        assert headers is not None and headers is keys["b"].headers
        assert headers["authorization"].startswith("Bearer tok-")
        assert "api-key" not in headers
        state = keys["a"].state()
        assert state is not None and state.valid_until is not None and state.last_error is None
        assert "tok-" not in repr(state) and "tok-" not in repr(keys["a"].source)
        # a reload that drops the default-chain resources closes its source
        rebound = creds.bind(config({"a": {"endpoint": "https://a", "auth": "entra", "entra": mi}}))
        assert rebound["a"].source is keys["a"].source
        await creds.start(wait=0)
        assert script.closed == 1
    finally:
        await creds.close()


async def test_failure_at_start_leaves_the_resource_without_token_then_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script()
    script.fail = RuntimeError("identity endpoint unreachable\ndetails")
    creds = Credentials(script.factory)
    keys = creds.bind(config({"e": {"endpoint": "https://e", "auth": "entra"}}))
    try:
        await creds.start()
        assert keys["e"].headers is None
        state = keys["e"].state()
        assert state is not None and state.valid_until is None
        assert state.last_error == "identity endpoint unreachable"
        assert "could not get a token for resource e" in caplog.text
        assert "requests will not go to e" in caplog.text
        script.fail = None
        for _ in range(40):  # the background retry (after 1 s) picks it up
            if keys["e"].headers is not None:
                break
            await asyncio.sleep(0.1)
        assert keys["e"].headers is not None
        state = keys["e"].state()
        assert state is not None and state.last_error is None
    finally:
        await creds.close()


async def test_refresh_asks_a_fresh_credential_when_the_cache_answers() -> None:
    script = Script()
    source = TokenSource(Entra(), script.factory)
    try:
        await source._fetch()
        first = source.current()
        assert first is not None and script.issued == 1
        await source._fetch()  # the credential's cache hands back tok-1: a new one is asked
        second = source.current()
        assert second is not None and second != first and script.issued == 2
        assert script.made == 2 and script.closed == 1  # the old credential is closed
        assert source.secrets == ("tok-2", "tok-1")  # what a relayed answer must not echo
    finally:
        await source.close()


async def test_renew_after_401_once_per_interval_and_single_flight() -> None:
    script = Script()
    source = TokenSource(Entra(), script.factory)
    key = EntraKey("e", Entra(), source)
    try:
        await source._fetch()
        used = key.headers
        assert used is not None
        results = await asyncio.gather(*(key.renew(used) for _ in range(5)))
        assert results == [True] * 5 and script.issued == 2  # one fetch for five callers
        newer = key.headers
        assert newer is not None and newer != used
        assert not await key.renew(newer)  # again within RENEW_INTERVAL: no fetch, no retry
        assert script.issued == 2
        await source.close()
        source._last_forced = 0.0
        assert not await key.renew(newer)  # a closed (retired) source fetches nothing
        assert script.issued == 2
    finally:
        await source.close()


async def test_expired_token_is_not_sent() -> None:
    script = Script(lifetime=1)
    source = TokenSource(Entra(), script.factory)
    try:
        await source._fetch()
        assert source.current() is None  # within EXPIRY_SKEW of its expiry
    finally:
        await source.close()


async def test_each_credential_setting_builds_the_azure_identity_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.identity import aio

    token_file = tmp_path / "federated-token"
    token_file.write_text("a-federated-token")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000002")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    tenant = "00000000-0000-0000-0000-000000000003"
    expected = [
        (Entra(), aio.DefaultAzureCredential),
        (Entra(credential="managed_identity", client_id="abc"), aio.ManagedIdentityCredential),
        (Entra(credential="workload_identity"), aio.WorkloadIdentityCredential),
        (Entra(credential="azure_cli", tenant_id=tenant), aio.AzureCliCredential),
        (
            Entra.model_validate(
                {
                    "credential": "client_secret",
                    "client_id": "c",
                    "tenant_id": tenant,
                    "client_secret": "s",
                }
            ),
            aio.ClientSecretCredential,
        ),
    ]
    for settings, kind in expected:
        credential = make_credential(settings)
        try:
            assert isinstance(credential, kind), settings
        finally:
            await credential.close()
