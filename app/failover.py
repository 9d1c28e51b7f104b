"""The attempt loop: keys, deployments, Retry-After, cooldowns, max_attempts.

`connect()` returns the first upstream response worth relaying (2xx, or a 4xx
about the request itself, which every region would answer alike), or raises
the `GatewayError` that sums up why nothing could serve. A stream is returned
unread (relaying it is `app.relay`'s job, so streams stay streams); a body the
caller wants whole (`buffer=True`) is read here, because until it is complete
nothing has reached the client and a body cut short can still fail over.

Rules (README "How failover works"):
- candidates come from `routing.order`: priority, weight, cooling ones skipped;
- 401/403: next key of the same resource; the key is remembered as rejected
  for `rejected_key_ttl`. An Entra ID resource first gets one new token and
  one retry on a 401 (`app.upstream_auth`); a resource with no valid token
  is skipped;
- 429: the deployment cools for the upstream's `retry-after-ms`, else
  `retry-after`, else `cooldown`; next candidate;
- 5xx, 3xx (a redirect is never followed nor relayed), timeout, connection
  error (also one after the request was written: it is never sent again on
  another connection), a body cut short or over its limits: the deployment
  cools for `cooldown`; next candidate;
- 404 (DeploymentNotFound): next candidate, with a warning naming it;
- other 4xx: returned to the caller as is;
- at most `max_attempts` upstream calls.

When nothing served (`_give_up`): if any candidate is throttled or was skipped
while cooling, capacity comes back at a known time, so the caller gets 429 with
the moment the first candidate recovers; otherwise every candidate failed hard
and the caller gets 502 (504 if every one timed out). A cancelled request (the
client hung up) leaves through `CancelledError` and touches no state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app import azure
from app.attemptlog import AttemptLog, what_failed
from app.errors import (
    GatewayError,
    RateLimited,
    UpstreamFailed,
    UpstreamKeysRejected,
    UpstreamTimeout,
)
from app.routing import Target
from app.state import State
from app.upstream import (
    Body,
    ConnectFailed,
    Outcome,
    Response,
    StreamBroken,
    TimedOut,
    Timeouts,
    Upstream,
    classify,
)

log = logging.getLogger("aoai_gateway")

# failure reasons in `Trace.failures`
THROTTLED = "throttled"
KEY_REJECTED = "key rejected"
KEYS_REJECTED = "keys rejected"
TOKEN_REJECTED = "Entra ID token rejected"
NO_TOKEN = "no Entra ID token"
TIMEOUT = "timeout"


class Recorder(Protocol):
    """Where the loop reports each attempt (metrics implement this)."""

    def upstream(self, api: str, target: Target, status: str) -> None: ...
    def failover(self, api: str, reason: str) -> None: ...


class Call(Protocol):
    """One request's upstream call, whichever operation it is."""

    api: str  # the operation's name, for metrics
    method: str
    # The URL names a thing on the resource (a stored response), not a deployment:
    # a 404 says that thing does not exist, and is the caller's answer.
    addressed: bool
    content_type: str | None  # None: JSON; else the body's own (a multipart boundary)

    def prepare(self, target: Target) -> tuple[str, Body]:
        """The URL and body to send to this deployment."""
        ...


@dataclass(frozen=True, slots=True)
class Policy:
    max_attempts: int
    cooldown: float
    rejected_key_ttl: float
    timeouts: Timeouts


@dataclass(slots=True)
class Trace:
    """What happened, for the access log and for the final error."""

    attempts: int = 0
    target: Target | None = None
    failures: list[tuple[Target, str]] = field(default_factory=list)


class _Read:
    """A response whose body was read inside the loop."""

    __slots__ = ("_body", "_resp", "status")

    def __init__(self, resp: Response, body: bytes) -> None:
        self._resp = resp
        self._body = body
        self.status = resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def aclose(self) -> None:
        await self._resp.aclose()


@dataclass(slots=True)
class _Outlook:
    """When capacity comes back, gathered while the loop runs."""

    recovers: float | None  # earliest moment a cooling candidate is back
    throttled: bool  # some candidate is throttled or cooling: waiting helps

    def cooling(self, until: float) -> None:
        self.recovers = until if self.recovers is None else min(self.recovers, until)


async def connect(
    upstream: Upstream,
    state: State,
    policy: Policy,
    ordered: Sequence[Target],
    recovers: float | None,
    call: Call,
    recorder: Recorder,
    trace: Trace,
    *,
    buffer: bool = False,
    attempt_log: AttemptLog | None = None,
) -> Response:
    """The first response worth relaying; `recovers` is when the first candidate
    that `routing.order` skipped as cooling is back (None if none was). Each
    failed attempt is reported to `attempt_log` (one warning, repeats summarized)."""
    outlook = _Outlook(recovers, recovers is not None)
    failed = (attempt_log or AttemptLog(log, window=0)).failed
    for target in ordered:
        now = time.time()
        keys = [k for k in target.keys if not state.key_rejected(k.id, now)]
        if not keys:
            entra = bool(target.keys) and target.keys[0].entra
            trace.failures.append((target, TOKEN_REJECTED if entra else KEYS_REJECTED))
            continue
        url, body = call.prepare(target)
        renewed = False
        for key in keys:
            headers = key.headers
            if headers is None:  # an Entra ID resource without a valid token: unavailable
                trace.failures.append((target, NO_TOKEN))
                recorder.failover(call.api, "no_token")
                continue
            if call.content_type is not None:
                headers = {**headers, "content-type": call.content_type}
            if trace.attempts >= policy.max_attempts:
                if outlook.throttled:
                    outlook.recovers = time.time()  # this candidate is untried and ready now
                raise _give_up(trace, outlook, exhausted=True)
            trace.attempts += 1
            trace.target = target
            try:
                resp = await upstream.request(
                    call.method, url, headers, body, timeout=policy.timeouts
                )
            except (TimedOut, ConnectFailed) as exc:
                reason = TIMEOUT if isinstance(exc, TimedOut) else "connect_error"
                failed(target.resource, target.deployment, key.id, what_failed(exc))
                recorder.upstream(call.api, target, reason)
                _down(state, target, policy, outlook, trace, reason, recorder, call.api)
                break
            recorder.upstream(call.api, target, str(resp.status))
            outcome = classify(resp.status)
            if outcome is Outcome.NOT_FOUND and call.addressed:
                outcome = Outcome.CLIENT_ERROR  # the thing addressed is gone: Azure's answer
            if outcome is Outcome.OK or outcome is Outcome.CLIENT_ERROR:
                if not buffer:
                    return resp
                try:
                    return _Read(resp, await resp.read())
                except StreamBroken as exc:
                    failed(
                        target.resource,
                        target.deployment,
                        key.id,
                        f"HTTP {resp.status}, body broke before it was complete ({exc})",
                    )
                    await resp.aclose()
                    _down(state, target, policy, outlook, trace, "stream_error", recorder, call.api)
                    break
                except BaseException:
                    await resp.aclose()
                    raise
            await resp.aclose()
            if outcome is Outcome.KEY_REJECTED and key.entra:
                if resp.status == 401 and not renewed:
                    renewed = True  # one new token and one retry on this resource
                    if await key.renew(headers):
                        failed(
                            target.resource,
                            target.deployment,
                            key.id,
                            "Entra ID token refused (HTTP 401); retrying once with a new token",
                        )
                        keys.append(key)
                        continue
                state.reject_key(key.id, time.time() + policy.rejected_key_ttl)
                failed(
                    target.resource,
                    target.deployment,
                    key.id,
                    f"Entra ID token rejected (HTTP {resp.status}): the identity lacks a role "
                    "on this resource: assign Cognitive Services OpenAI User",
                )
                trace.failures.append((target, TOKEN_REJECTED))
                recorder.failover(call.api, "token_rejected")
                continue
            if outcome is Outcome.KEY_REJECTED:
                state.reject_key(key.id, time.time() + policy.rejected_key_ttl)
                failed(
                    target.resource,
                    target.deployment,
                    key.id,
                    f"key rejected (HTTP {resp.status}); trying the next key",
                )
                trace.failures.append((target, KEY_REJECTED))
                recorder.failover(call.api, "key_rejected")
                continue
            if outcome is Outcome.THROTTLED:
                wait = azure.retry_after(resp.headers)
                after = "" if wait is None else f", retry after {wait:g} s"
                failed(target.resource, target.deployment, key.id, f"throttled (HTTP 429{after})")
                until = time.time() + (policy.cooldown if wait is None else wait)
                state.cool(target.id, until)
                outlook.cooling(until)
                outlook.throttled = True
                trace.failures.append((target, THROTTLED))
                recorder.failover(call.api, "throttled")
                break
            if outcome is Outcome.NOT_FOUND:
                failed(
                    target.resource,
                    target.deployment,
                    key.id,
                    f"deployment {target.deployment} not found on resource {target.resource} "
                    f"(HTTP 404): check models.{target.model}",
                )
                trace.failures.append((target, "deployment not found"))
                recorder.failover(call.api, "not_found")
                break
            if outcome is Outcome.REDIRECT:
                failed(
                    target.resource,
                    target.deployment,
                    key.id,
                    f"answered HTTP {resp.status} (a redirect, not followed): check its endpoint",
                )
            else:
                failed(target.resource, target.deployment, key.id, f"HTTP {resp.status}")
            _down(state, target, policy, outlook, trace, f"HTTP {resp.status}", recorder, call.api)
            break
    raise _give_up(trace, outlook, exhausted=False)


def _down(
    state: State,
    target: Target,
    policy: Policy,
    outlook: _Outlook,
    trace: Trace,
    reason: str,
    recorder: Recorder,
    api: str,
) -> None:
    """5xx, timeout, connection error: the deployment sits out `cooldown`."""
    until = cool_down(state, policy, target)
    if until is not None:
        outlook.cooling(until)
    trace.failures.append((target, reason))
    recorder.failover(api, "server_error" if reason.startswith("HTTP") else reason)


def cool_down(state: State, policy: Policy, target: Target) -> float | None:
    """Put a failed deployment out for `cooldown` seconds; when it is back, if it went out."""
    if policy.cooldown <= 0:
        return None
    until = time.time() + policy.cooldown
    state.cool(target.id, until)
    return until


def _give_up(trace: Trace, outlook: _Outlook, *, exhausted: bool) -> GatewayError:
    summary = ", ".join(f"{t.id}: {reason}" for t, reason in trace.failures) or "none tried"
    if outlook.throttled and outlook.recovers is not None:
        return RateLimited(
            "No deployment of this model can take the request now; they are throttled or "
            f"cooling down ({summary}). Retry after the time in the retry-after header.",
            outlook.recovers - time.time(),
        )
    reasons = {reason for _, reason in trace.failures}
    if reasons and reasons <= {KEY_REJECTED, KEYS_REJECTED, TOKEN_REJECTED}:
        names = ", ".join(sorted({t.resource for t, _ in trace.failures}))
        if TOKEN_REJECTED in reasons:
            return UpstreamKeysRejected(
                f"Azure rejected the gateway's credentials for resource(s) {names}: update "
                "their keys, or assign the gateway's identity the Cognitive Services OpenAI "
                "User role."
            )
        return UpstreamKeysRejected(
            f"Azure rejected every key of resource(s) {names}: update their keys."
        )
    if exhausted:
        return UpstreamFailed(
            f"No deployment answered within {trace.attempts} attempts ({summary})."
        )
    if reasons == {TIMEOUT}:
        return UpstreamTimeout(f"Every deployment timed out ({summary}).")
    return UpstreamFailed(f"No deployment could serve this request ({summary}).")
