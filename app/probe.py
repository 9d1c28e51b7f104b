"""`aoai-gateway check --probe`: which resource x key x deployment really works.

Many models are listed, few are usable, and it differs by region and key. The
probe makes one minimal live call (`max_tokens: 1`, `max_completion_tokens: 1`
for reasoning deployments) for every resource x key x deployment in the
configuration, prints a progress line as each call finishes, then a table:

    OK (latency) / key rejected (401) / deployment not found (404) /
    throttled (429) / timeout / error (...)

and exits 1 when some model has no working path. A throttled path counts as
working: Azure accepted the key and found the deployment, it is only busy.
Keys are shown as `key1`, `key2` and their hash id, never their value.

`plan` and `classify` are pure; `probe` does the I/O through `HttpxUpstream`
with the URLs, headers and bodies of `app.azure`, exactly as the gateway
would send them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

import orjson

from app import azure
from app.config import Config
from app.operations.chat import rewrite_body
from app.routing import Target, build_table
from app.upstream import ConnectFailed, HttpxUpstream, TimedOut, Timeouts, Upstream
from app.upstream_auth import Credentials, EntraKey, Key

CONCURRENCY = 4
PROMPT = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
WORKING = ("ok", "throttled")
ROLE_MISSING = "identity lacks a role on this resource: assign Cognitive Services OpenAI User"


@dataclass(frozen=True)
class Probe:
    resource: str
    deployment: str
    form: str
    url: str
    reasoning: bool
    key_label: str  # key1, key2, ... or entra
    key: Key
    models: tuple[str, ...]

    @property
    def path(self) -> tuple[str, str, str]:
        """Resource, deployment and URL form: one row of the table, for any key."""
        return self.resource, self.deployment, self.form

    def describe(self) -> str:
        return f"{self.resource}/{self.deployment} {self.key_label} ({self.key.id})"


@dataclass(frozen=True)
class Result:
    probe: Probe
    outcome: str  # ok, key_rejected, not_found, throttled, timeout, error
    text: str

    @property
    def working(self) -> bool:
        return self.outcome in WORKING


def plan(config: Config, entra: Mapping[str, EntraKey] | None = None) -> list[Probe]:
    """One probe per distinct deployment URL x key, with the models it serves."""
    found: dict[tuple[str, str], tuple[Target, list[str]]] = {}
    for model, targets in build_table(config, entra).items():
        for t in targets:
            found.setdefault((t.url, t.deployment), (t, []))[1].append(model)
    probes = []
    for t, models in found.values():
        form = f"legacy {t.api_version}" if t.api == "legacy" else "v1"
        for i, key in enumerate(t.keys, start=1):
            probes.append(
                Probe(
                    t.resource,
                    t.deployment,
                    form,
                    t.url,
                    t.reasoning,
                    "entra" if key.entra else f"key{i}",
                    key,
                    tuple(models),
                )
            )
    return probes


def classify(
    status: int, body: bytes, latency: float, retry_after: float | None, entra: bool = False
) -> tuple[str, str]:
    """(outcome, text for the table) of one answered call."""
    if 200 <= status < 300:
        return "ok", f"OK ({latency * 1000:.0f} ms)"
    if entra and status == 401:
        return "key_rejected", f"{ROLE_MISSING} (401)"
    if entra and status == 403:
        return "key_rejected", "token refused (403): check the resource's network rules"
    if status in (401, 403):
        return "key_rejected", f"key rejected ({status})"
    if status == 404:
        code = _error_field(body, "code")
        hint = (
            ""
            if code in (None, "DeploymentNotFound")
            else f": Azure says {code}, check the endpoint and api form"
        )
        return "not_found", f"deployment not found (404){hint}"
    if status == 429:
        wait = f", retry after {retry_after:g} s" if retry_after is not None else ""
        return "throttled", f"throttled (429{wait})"
    what = _error_field(body, "code") or _error_field(body, "message")
    return "error", f"error (HTTP {status}" + (f": {what[:100]}" if what else "") + ")"


def _error_field(body: bytes, name: str) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    value = err.get(name) if isinstance(err, dict) else None
    return str(value) if value is not None else None


async def probe(upstream: Upstream, p: Probe, timeouts: Timeouts) -> Result:
    outcome, text = await _call(upstream, p, timeouts)
    if p.key.value and p.key.value in text:  # belt and braces: never echo the key
        text = text.replace(p.key.value, "***")
    return Result(p, outcome, text)


async def _call(upstream: Upstream, p: Probe, timeouts: Timeouts) -> tuple[str, str]:
    body = rewrite_body(PROMPT, deployment=p.deployment, reasoning=p.reasoning, want_usage=False)
    headers = p.key.headers
    if headers is None:  # an Entra ID resource whose token could not be obtained
        return "no_token", "no Entra ID token (see above)"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeouts.connect + timeouts.read):
            resp = await upstream.request("POST", p.url, headers, body, timeout=timeouts)
            try:
                data = await resp.read()
            finally:
                await resp.aclose()
    except (TimedOut, TimeoutError):
        return "timeout", f"timeout (no answer within {timeouts.read:g} s)"
    except ConnectFailed as exc:
        return "error", f"error (connection: {exc})"
    except Exception as exc:  # a broken body, a TLS error, ...: report it, go on
        return "error", f"error ({type(exc).__name__}: {exc})"
    latency = time.perf_counter() - started
    return classify(resp.status, data, latency, azure.retry_after(resp.headers), p.key.entra)


async def probe_all(
    probes: Sequence[Probe],
    upstream: Upstream,
    timeouts: Timeouts,
    progress: Callable[[int, Result], None],
) -> list[Result]:
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(p: Probe) -> Result:
        nonlocal done
        async with gate:
            result = await probe(upstream, p, timeouts)
        done += 1
        progress(done, result)
        return result

    return list(await asyncio.gather(*(one(p) for p in probes)))


def table(results: Sequence[Result]) -> list[str]:
    header = ("RESOURCE", "DEPLOYMENT", "FORM", "KEY", "RESULT")
    rows = [header]
    for r in sorted(results, key=lambda r: (*r.probe.path, r.probe.key_label)):
        p = r.probe
        rows.append((p.resource, p.deployment, p.form, f"{p.key_label} ({p.key.id})", r.text))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]


def verdict(config: Config, results: Sequence[Result]) -> tuple[list[str], list[str]]:
    """(one line per model, the models with no working path)."""
    lines, broken = [], []
    for model in config.models:
        mine = [r for r in results if model in r.probe.models]
        working = sum(1 for r in mine if r.working)
        if working:
            lines.append(f"  {model}: {working} of {len(mine)} paths work")
        else:
            lines.append(f"  {model}: NO WORKING PATH ({len(mine)} tried)")
            broken.append(model)
    return lines, broken


async def _run(config: Config, timeout: float, out: TextIO) -> int:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    credentials = Credentials()
    try:
        entra = credentials.bind(config)
        if entra:
            await credentials.start(wait=timeout)
            say("")
            say("Entra ID tokens:")
            for line in token_lines(entra.values()):
                say(line)
        return await _probe_paths(config, entra, timeout, say)
    finally:
        await credentials.close()


def token_lines(keys: Iterable[EntraKey]) -> list[str]:
    """Whether each resource's identity got a token; never the token."""
    lines = []
    for k in keys:
        st = k.state()
        if st is None:
            continue
        if st.valid_until is not None:
            until = time.strftime("%H:%M:%S UTC", time.gmtime(st.valid_until))
            lines.append(
                f"  {k.resource}: entra ({st.credential}): token obtained, valid until {until}"
            )
        else:
            why = st.last_error or "no answer from the credential"
            lines.append(f"  {k.resource}: entra ({st.credential}): NO TOKEN: {why}")
    return lines


async def _probe_paths(
    config: Config, entra: Mapping[str, EntraKey], timeout: float, say: Callable[[str], None]
) -> int:
    probes = plan(config, entra)
    total = len(probes)
    say("")
    say(f"probing {total} paths (resource x key x deployment), 1 token each:")
    width = len(str(total))

    def progress(n: int, r: Result) -> None:
        say(f"  [{n:>{width}}/{total}] {r.probe.describe()}: {r.text}")

    upstream = HttpxUpstream()
    try:
        results = await probe_all(
            probes, upstream, Timeouts(connect=min(timeout, 10.0), read=timeout), progress
        )
    finally:
        await upstream.aclose()
    say("")
    for line in table(results):
        say(line)
    lines, broken = verdict(config, results)
    say("")
    say("models:")
    for line in lines:
        say(line)
    if broken:
        say(f"probe FAILED: no working path for {', '.join(broken)}")
        return 1
    say("probe OK: every model has a working path")
    return 0


def run_probe(config: Config, timeout: float, out: TextIO | None = None) -> int:
    return asyncio.run(_run(config, timeout, out or sys.stdout))
