"""How the gateway authenticates to a resource: Azure keys, or a Microsoft Entra ID token.

The attempt loop (`app.failover`) asks a target's keys for `headers` and never
cares which kind it holds:

- `UpstreamKey`: one Azure key; its headers are built once, so a key resource
  costs nothing per request. key1 -> key2 rotation stays the loop's job.
- `EntraKey`: the one "key" of an `auth: entra` resource. Its headers are the
  current token of a `TokenSource` (None while there is no valid token: the
  resource is then unavailable), and `renew()` is what a 401 from Azure calls
  before the loop retries the same resource once.

A `TokenSource` wraps one `azure.identity.aio` credential, shared by every
resource with the same `entra:` settings (`Credentials` keeps one per
distinct settings and survives reloads). It fetches the token at start-up,
then refreshes it in the background before it expires (at the credential's
`refresh_on`, else `REFRESH_MARGIN` before expiry, half-way for short-lived
tokens), retrying with backoff when the identity endpoint fails. Requests only
read the current headers; nothing fetches a token on the hot path except
`renew()` after a 401, at most once per `RENEW_INTERVAL`.

`headers` carry `content-type: application/json`; an operation that sends
another body merges its own content type over them.

A token never leaves this module except inside the `Authorization` header:
no repr, log line, status or error message holds it, and `Credentials.secrets`
lets `app.redact` scrub it from answers that quote it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from app import azure
from app.config import Config, Entra, Resource

log = logging.getLogger("aoai_gateway")

REFRESH_MARGIN = 300.0  # s before expiry a token is replaced (the SDK's own margin)
RENEW_INTERVAL = 30.0  # s between two refreshes forced by a 401
FETCH_TIMEOUT = 30.0  # s one token request may take
STARTUP_WAIT = 30.0  # s start-up waits for the first tokens
MAX_RETRY = 60.0  # s between attempts while the identity endpoint fails
EXPIRY_SKEW = 2.0  # s before expiry a token is no longer sent

CREDENTIAL_NAMES = {
    "default": "default credential chain",
    "managed_identity": "managed identity",
    "workload_identity": "workload identity",
    "azure_cli": "Azure CLI",
    "client_secret": "client secret",
}


class Key(Protocol):
    """What the attempt loop needs from a resource's credential."""

    @property
    def id(self) -> str: ...  # safe to log, store and share
    @property
    def value(self) -> str: ...  # a key's secret ("" for Entra): only for scrubbing output
    @property
    def entra(self) -> bool: ...
    @property
    def headers(self) -> Mapping[str, str] | None: ...
    async def renew(self, used: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    """One Azure key. `id` is a short hash: safe to log, store and share."""

    id: str
    value: str = ""
    headers: Mapping[str, str] = field(init=False, repr=False, compare=False)
    entra: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", azure.request_headers(self.value))

    def __repr__(self) -> str:
        return f"UpstreamKey({self.id})"

    async def renew(self, used: Mapping[str, str]) -> bool:
        return False  # a rejected key stays rejected: the next key takes over


def key_id(resource: str, value: str) -> str:
    digest = hashlib.sha256(f"{resource}\0{value}".encode()).hexdigest()
    return f"{resource}#{digest[:12]}"


class EntraKey:
    """A resource's Entra ID identity; unbound (no source) in `check` without `--probe`."""

    __slots__ = ("id", "resource", "settings", "source")
    entra: ClassVar[bool] = True
    value: ClassVar[str] = ""

    def __init__(self, resource: str, settings: Entra, source: TokenSource | None = None):
        self.id = f"{resource}#entra"
        self.resource = resource
        self.settings = settings
        self.source = source

    def __repr__(self) -> str:
        return f"EntraKey({self.id})"

    @property
    def headers(self) -> Mapping[str, str] | None:
        source = self.source
        return source.current() if source is not None else None

    async def renew(self, used: Mapping[str, str]) -> bool:
        source = self.source
        return await source.renew(used) if source is not None else False

    def state(self) -> TokenState | None:
        return self.source.state() if self.source is not None else None


def resource_keys(
    name: str, res: Resource, entra: Mapping[str, EntraKey] | None = None
) -> tuple[Key, ...]:
    """The keys the attempt loop walks for one resource, in order."""
    if res.auth == "entra":
        bound = entra.get(name) if entra is not None else None
        return (bound or EntraKey(name, res.entra or Entra()),)
    return tuple(
        UpstreamKey(key_id(name, k.get_secret_value()), k.get_secret_value()) for k in res.keys
    )


def describe(keys: tuple[Key, ...]) -> str:
    """How a resource authenticates, for `check`: its number of keys, or
    `entra (managed identity, client id …abc)`; never a secret."""
    for k in keys:
        if isinstance(k, EntraKey):
            return f"entra ({describe_settings(k.settings)})"
    return str(len(keys))


def describe_settings(s: Entra) -> str:
    parts = [CREDENTIAL_NAMES[s.credential]]
    if s.client_id:
        parts.append(f"client id \u2026{s.client_id[-3:]}")
    if s.tenant_id:
        parts.append(f"tenant \u2026{s.tenant_id[-3:]}")
    if s.scope != Entra().scope:
        parts.append(f"scope {s.scope}")
    return ", ".join(parts)


# --- pure decisions ----------------------------------------------------------------


def refresh_at(obtained: float, expires_on: float, refresh_on: float | None) -> float:
    """When to replace a token: the credential's `refresh_on` if it gave one,
    else `REFRESH_MARGIN` before expiry (half-way through a shorter lifetime)."""
    lifetime = max(0.0, expires_on - obtained)
    at = expires_on - min(REFRESH_MARGIN, lifetime / 2)
    if refresh_on is not None and obtained < refresh_on < at:
        at = refresh_on
    return at


def retry_delay(failures: int) -> float:
    """Seconds before the next attempt after `failures` failed ones: 1, 2, 4, ... 60."""
    return float(min(MAX_RETRY, 2 ** max(0, failures - 1)))


def short_error(exc: BaseException) -> str:
    """One line about a failed token request, for status pages and `check --probe`."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    first = first or type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


# --- tokens ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenState:
    """What `/status` and `check --probe` show of a token: never the token."""

    credential: str  # describe_settings()
    valid_until: float | None  # None: no usable token
    obtained_at: float | None
    last_error: str | None  # the last failed refresh, cleared by the next success
    last_error_at: float | None


CredentialFactory = Callable[[Entra], Any]


def make_credential(settings: Entra) -> Any:
    """The azure-identity async credential for one `entra:` block (imported lazily:
    a gateway with keys only never loads it)."""
    from azure.identity import aio

    # Our own loop retries with backoff; the SDK's retries would hold a request for a minute.
    pipeline: dict[str, Any] = {"retry_total": 0}
    s = settings
    secret = s.client_secret.get_secret_value() if s.client_secret else ""
    if s.credential == "managed_identity":
        return aio.ManagedIdentityCredential(client_id=s.client_id, **pipeline)
    if s.credential == "workload_identity":
        return aio.WorkloadIdentityCredential(
            tenant_id=s.tenant_id, client_id=s.client_id, **pipeline
        )
    if s.credential == "azure_cli":
        return aio.AzureCliCredential(tenant_id=s.tenant_id or "")
    if s.credential == "client_secret":
        return aio.ClientSecretCredential(s.tenant_id or "", s.client_id or "", secret, **pipeline)
    extra: dict[str, Any] = {}
    if s.client_id:
        extra["managed_identity_client_id"] = s.client_id
        extra["workload_identity_client_id"] = s.client_id
    if s.tenant_id:
        extra["workload_identity_tenant_id"] = s.tenant_id
    return aio.DefaultAzureCredential(**extra, **pipeline)


class TokenSource:
    """One credential's current token, refreshed in the background."""

    def __init__(self, settings: Entra, factory: CredentialFactory = make_credential) -> None:
        self.settings = settings
        self.label = describe_settings(settings)
        self.resources: list[str] = []
        self._factory = factory
        self._credential: Any = None
        self._token = ""
        self.secrets: tuple[str, ...] = ()  # this token and the one before: never relayed
        self._headers: Mapping[str, str] | None = None
        self._expires_on = 0.0
        self._refresh_on: float | None = None
        self._obtained = 0.0
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_forced = 0.0
        self._lock = asyncio.Lock()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False  # retired by a reload, or shut down: fetches nothing more

    def __repr__(self) -> str:
        return f"TokenSource({self.label})"

    # the hot path ---------------------------------------------------------------
    def current(self) -> Mapping[str, str] | None:
        headers = self._headers
        if headers is not None and time.time() < self._expires_on - EXPIRY_SKEW:
            return headers
        return None

    async def renew(self, used: Mapping[str, str]) -> bool:
        """After a 401 with `used`: get another token (once per `RENEW_INTERVAL`).
        True when there is a different valid token to retry with."""
        if self._headers is not used and self.current() is not None:
            return True  # another request renewed it already
        if self._closed or time.time() - self._last_forced < RENEW_INTERVAL:
            return False
        async with self._lock:
            if self._headers is used or self.current() is None:
                self._last_forced = time.time()
                try:
                    await self._fetch()
                except Exception as exc:
                    self._failed(exc)
                    return False
        return self._headers is not used and self.current() is not None

    # background -----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_first(self) -> None:
        await self._first.wait()

    async def _run(self) -> None:
        failures = 0
        unchanged = 0
        while True:
            before = self._token
            try:
                async with self._lock:
                    await self._fetch()
            except Exception as exc:
                failures += 1
                self._failed(exc)
                delay = retry_delay(failures)
            else:
                if failures:
                    log.warning("Entra ID: token for %s obtained again", self._where())
                failures = 0
                unchanged = unchanged + 1 if self._token == before else 0
                delay = refresh_at(self._obtained, self._expires_on, self._refresh_on) - time.time()
                if unchanged:  # the credential handed back the token we had: back off
                    delay = max(delay, retry_delay(unchanged))
            self._first.set()
            await asyncio.sleep(max(1.0, delay))

    async def _fetch(self) -> None:
        """Get a token; if the credential's cache hands back the one we hold, ask a
        fresh credential, so a refresh really goes to the identity endpoint."""
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                info = await self._request()
        except TimeoutError:
            raise TimeoutError(f"no token within {FETCH_TIMEOUT:g} s") from None
        first = not self._token
        self.secrets = (info.token, self._token) if self._token else (info.token,)
        self._token = info.token
        self._obtained = time.time()
        self._expires_on = float(info.expires_on)
        self._refresh_on = float(info.refresh_on) if info.refresh_on else None
        self._headers = azure.bearer_headers(info.token)
        self._last_error = self._last_error_at = None
        (log.info if first else log.debug)(
            "Entra ID: token for %s (%s), valid until %s",
            self._where(),
            self.label,
            _utc(self._expires_on),
        )

    async def _request(self) -> Any:
        if self._credential is None:
            self._credential = self._factory(self.settings)
        info = await self._credential.get_token_info(self.settings.scope)
        if info.token == self._token:
            fresh = self._factory(self.settings)
            try:
                info = await fresh.get_token_info(self.settings.scope)
            except BaseException:
                await fresh.close()
                raise
            old, self._credential = self._credential, fresh
            await old.close()
        return info

    def _failed(self, exc: BaseException) -> None:
        self._last_error = short_error(exc)
        self._last_error_at = time.time()
        valid = self.current() is not None
        lines = str(exc).strip().splitlines() or [type(exc).__name__]  # all of it, for the log
        detail = "\n    ".join(lines[1:])  # e.g. each credential the default chain tried
        log.error(
            "Entra ID: could not get a token for %s (%s): %s\n  %s%s",
            self._where(),
            self.label,
            lines[0],
            "the current token stays in use until it expires"
            if valid
            else "requests will not go to "
            + (", ".join(self.resources) or "these resources")
            + " until a token is obtained; retrying in the background",
            f"\n    {detail}" if detail else "",
        )
        if not valid:
            self._headers = None

    def _where(self) -> str:
        return "resource " + ", ".join(self.resources) if self.resources else "no resource"

    def state(self) -> TokenState:
        valid = self.current() is not None
        return TokenState(
            credential=self.label,
            valid_until=self._expires_on if valid else None,
            obtained_at=self._obtained or None,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
        )

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._credential is not None:
            with contextlib.suppress(Exception):
                await self._credential.close()
            self._credential = None


def entra_secrets(config: Config) -> list[str]:
    """The client secrets in `entra:` blocks: redacted like keys."""
    return [
        res.entra.client_secret.get_secret_value()
        for res in config.resources.values()
        if res.entra is not None and res.entra.client_secret is not None
    ]


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _settings_key(s: Entra) -> tuple[str | None, ...]:
    secret = s.client_secret.get_secret_value() if s.client_secret else None
    return (s.credential, s.client_id, s.tenant_id, secret, s.scope)


class Credentials:
    """One `TokenSource` per distinct `entra:` settings; outlives configuration reloads."""

    def __init__(self, factory: CredentialFactory = make_credential) -> None:
        self._factory = factory
        self._sources: dict[tuple[str | None, ...], TokenSource] = {}
        self._retired: list[TokenSource] = []

    def bind(self, config: Config) -> dict[str, EntraKey]:
        """The Entra keys of `config`'s resources, sharing sources by settings.
        Sources no longer used are closed by the next `start()`."""
        keys: dict[str, EntraKey] = {}
        users: dict[tuple[str | None, ...], list[str]] = {}
        for name, res in config.resources.items():
            if res.auth != "entra":
                continue
            settings = res.entra or Entra()
            k = _settings_key(settings)
            source = self._sources.get(k)
            if source is None:
                source = self._sources[k] = TokenSource(settings, self._factory)
            users.setdefault(k, []).append(name)
            keys[name] = EntraKey(name, settings, source)
        for k in list(self._sources):
            if k in users:
                self._sources[k].resources = users[k]
            else:
                self._retired.append(self._sources.pop(k))
        return keys

    async def start(self, wait: float = STARTUP_WAIT) -> None:
        """Start every new source's refresh loop; wait (at most `wait` s) for their
        first token or failure, so the gateway starts with what it can get."""
        retired, self._retired = self._retired, []
        for source in retired:
            await source.close()
        sources = list(self._sources.values())
        for source in sources:
            source.start()
        if sources:
            waits = [asyncio.ensure_future(s.wait_first()) for s in sources]
            _, pending = await asyncio.wait(waits, timeout=wait)
            for w in pending:
                w.cancel()

    def secrets(self) -> tuple[str, ...]:
        """The tokens in use now (and just before): what a relayed answer must not echo."""
        return tuple(t for source in self._sources.values() for t in source.secrets)

    async def close(self) -> None:
        for source in [*self._sources.values(), *self._retired]:
            await source.close()
        self._sources.clear()
        self._retired.clear()
