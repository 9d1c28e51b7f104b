"""The attempt loop: keys, deployments, Retry-After, cooldowns, max_attempts.

`connect()` returns the first upstream response worth relaying (2xx, or a 4xx
about the request itself, which every region would answer alike), or raises
the `GatewayError` that sums up why nothing could serve. It never reads a
successful body: relaying is `app.relay`'s job, so streams stay streams.

Rules (README "How failover works"):
- candidates come from `routing.order`: priority, weight, cooling ones skipped;
- 401/403: next key of the same resource; the key is remembered as rejected;
- 429: the deployment cools for the upstream's Retry-After (else `cooldown`);
- 5xx, timeout, connection error: the deployment cools for `cooldown`;
- 404: next deployment, with a warning naming it;
- other 4xx: returned to the caller as is;
- at most `max_attempts` upstream calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app import azure
from app.errors import (
    GatewayError,
    RateLimited,
    UpstreamFailed,
    UpstreamKeysRejected,
    UpstreamTimeout,
)
from app.routing import Target
from app.state import State
from app.upstream import ConnectFailed, Outcome, Response, TimedOut, Timeouts, Upstream, classify

log = logging.getLogger("aoai_gateway")


class Recorder(Protocol):
    """Where the loop reports each attempt (metrics implement this)."""

    def upstream(self, target: Target, status: str) -> None: ...
    def failover(self, reason: str) -> None: ...


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


async def connect(
    upstream: Upstream,
    state: State,
    policy: Policy,
    ordered: Sequence[Target],
    recovers: float | None,
    body_for: Callable[[Target], bytes],
    recorder: Recorder,
    trace: Trace,
) -> Response:
    throttled_until = recovers  # earliest moment a throttled/cooling candidate is back
    hard_failure = False
    for target in ordered:
        now = time.time()
        keys = [k for k in target.keys if not state.key_rejected(k.id, now)]
        if not keys:
            trace.failures.append((target, "keys rejected"))
            hard_failure = True
            continue
        body = body_for(target)
        for key in keys:
            if trace.attempts >= policy.max_attempts:
                raise _give_up(trace, throttled_until, hard_failure, policy)
            trace.attempts += 1
            trace.target = target
            try:
                resp = await upstream.post(
                    target.url, azure.request_headers(key.value), body, timeout=policy.timeouts
                )
            except (TimedOut, ConnectFailed) as exc:
                reason = "timeout" if isinstance(exc, TimedOut) else "connect_error"
                recorder.upstream(target, reason)
                _cool(state, target, policy.cooldown)
                trace.failures.append((target, reason))
                hard_failure = True
                recorder.failover(reason)
                break
            recorder.upstream(target, str(resp.status))
            outcome = classify(resp.status)
            if outcome is Outcome.OK or outcome is Outcome.CLIENT_ERROR:
                return resp
            await resp.aclose()
            if outcome is Outcome.KEY_REJECTED:
                state.reject_key(key.id, time.time() + policy.rejected_key_ttl)
                log.warning(
                    "resource %s rejected a key (%s, HTTP %s); trying the next key",
                    target.resource,
                    key.id,
                    resp.status,
                )
                trace.failures.append((target, "key rejected"))
                recorder.failover("key_rejected")
                continue
            if outcome is Outcome.THROTTLED:
                wait = azure.retry_after(resp.headers)
                until = time.time() + (policy.cooldown if wait is None else wait)
                state.cool(target.id, until)
                throttled_until = until if throttled_until is None else min(throttled_until, until)
                trace.failures.append((target, "throttled"))
                recorder.failover("throttled")
                break
            if outcome is Outcome.NOT_FOUND:
                log.warning(
                    "deployment %s not found on resource %s (HTTP 404): check models.%s",
                    target.deployment,
                    target.resource,
                    target.model,
                )
                trace.failures.append((target, "deployment not found"))
                hard_failure = True
                recorder.failover("not_found")
                break
            _cool(state, target, policy.cooldown)  # 5xx
            trace.failures.append((target, f"HTTP {resp.status}"))
            hard_failure = True
            recorder.failover("server_error")
            break
    raise _give_up(trace, throttled_until, hard_failure, policy)


def _cool(state: State, target: Target, seconds: float) -> None:
    if seconds > 0:
        state.cool(target.id, time.time() + seconds)


def _give_up(
    trace: Trace, throttled_until: float | None, hard_failure: bool, policy: Policy
) -> GatewayError:
    if not hard_failure and throttled_until is not None:
        return RateLimited(
            "Every deployment of this model is throttled or cooling down; retry after the "
            "time in the retry-after header.",
            throttled_until - time.time(),
        )
    reasons = [reason for _, reason in trace.failures]
    summary = ", ".join(f"{t.id}: {reason}" for t, reason in trace.failures) or "none tried"
    if reasons and all(r in ("key rejected", "keys rejected") for r in reasons):
        names = sorted({t.resource for t, _ in trace.failures})
        return UpstreamKeysRejected(
            "Azure rejected every key of resource(s) " + ", ".join(names) + ": update their keys."
        )
    if trace.attempts >= policy.max_attempts and trace.failures:
        return UpstreamFailed(
            f"No deployment answered within {trace.attempts} attempts ({summary})."
        )
    if reasons and all(r == "timeout" for r in reasons):
        return UpstreamTimeout(f"Every deployment timed out ({summary}).")
    return UpstreamFailed(f"No deployment could serve this request ({summary}).")
