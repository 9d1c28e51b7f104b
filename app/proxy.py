"""The hot path: `POST .../chat/completions` as a plain ASGI handler.

Authenticate from the headers, read the body (an unknown caller never gets a
byte of it read: its 401 goes out at once and app/listener.py drops the rest of
the body and closes), parse once with orjson,
pick the deployments,
open the upstream response through `failover.connect`, then relay it: a body
as bytes, a stream event by event through `relay.SSEFilter`. Nothing here
touches pydantic, FastAPI or stdlib json, and nothing runs per chunk but the
filter's byte scan and `send`.

A task watches `receive()` for the client's disconnect and cancels the request
at once: the upstream connection is closed, and the deployment's health is
not touched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from app import azure, relay
from app.auth import Caller, bearer_token
from app.disconnect import Watch
from app.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamFailed,
)
from app.failover import Trace, connect, cool_down
from app.gateway import Gateway
from app.jsonbody import load_object
from app.pricing import NANO
from app.routing import Target, order
from app.upstream import Response, StreamBroken

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("aoai_gateway")

# Azure response headers a client may use; everything else stays behind.
_PASS = (b"x-ms-region", b"apim-request-id", b"x-ratelimit-")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(slots=True)
class Record:
    """One access-log line; no content, no secrets."""

    request_id: str
    started: float
    path: str = ""
    method: str = "POST"
    key: str = "-"
    model: str = "-"  # the public model served (metrics label: only configured names)
    asked: str | None = None  # the model the request named, served or not
    status: int = 0
    responded: bool = False  # http.response.start was sent
    ended: bool = False  # the last body byte was sent: a disconnect now is no hang-up
    count_tokens: bool = False  # the caller has a tpm limit
    stream: bool = False
    ttft: float | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    answer_model: str | None = None  # the `model` field of Azure's answer
    trace: Trace = field(default_factory=Trace)
    error: str | None = None


def limits_text(rpm: int | None, tpm: int | None) -> str:
    """`rpm 3`, `tpm 1000` or `rpm 3, tpm 1000`: only the limits that are set."""
    return ", ".join(f"{n} {v}" for n, v in (("rpm", rpm), ("tpm", tpm)) if v is not None)


class HungUp(Exception):
    """The client went away before its request body was complete."""


def new_request_id() -> str:
    return os.urandom(12).hex()


# A caller's x-request-id is echoed and logged only if it looks like an id: short, and
# nothing that could break a log line or a header (UUIDs, hex, ULIDs, req_... all pass).
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")


def request_id(value: bytes | None) -> str:
    """The caller's `x-request-id` if it is sane, else a new one."""
    if value and _SANE_ID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()


async def handle_chat(
    gw: Gateway, scope: Scope, receive: Receive, send: Send, path_model: str | None = None
) -> None:
    started = time.perf_counter()
    headers = _wanted_headers(scope)
    rec = Record(
        request_id=request_id(headers.get(b"x-request-id")),
        started=started,
        path=scope["path"],
    )
    task = asyncio.current_task()
    assert task is not None
    watch = Watch(receive, task, rec)
    watches = gw.services.watches
    try:
        try:
            caller = authenticate(gw, headers)
            rec.key = caller.name
            body = await _read_body(gw, headers, receive)
            watches.arm(watch)
            await _serve(gw, caller, body, path_model, rec, send)
        except HungUp:
            rec.status = 499  # hung up while sending its body: nobody to answer
            rec.error = "client_disconnected"
        except GatewayError as exc:
            rec.status = exc.status
            rec.error = exc.code or exc.type
            await send_error(send, exc, rec.request_id)
        except Exception:
            log.exception("request %s failed inside the gateway", rec.request_id)
            rec.error = "internal_error"
            if not rec.responded:
                rec.status = 500
                await send_error(
                    send, GatewayError("The gateway failed on this request."), rec.request_id
                )
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        task.uncancel()
        rec.status = 499  # the client went away; nobody left to answer
        rec.error = "client_disconnected"
    finally:
        watches.disarm(watch)
        _finish(gw, rec)


def _wanted_headers(scope: Scope) -> dict[bytes, bytes]:
    wanted = {}
    for name, value in scope["headers"]:
        if name in (b"authorization", b"api-key", b"x-request-id", b"content-length"):
            wanted[name] = value
    return wanted


def authenticate(gw: Gateway, headers: dict[bytes, bytes]) -> Caller:
    """The caller from its headers alone, before any of the body is read."""
    auth = headers.get(b"authorization")
    api_key = headers.get(b"api-key")
    return gw.keys.authenticate(
        bearer_token(auth.decode("latin-1")) if auth else None,
        api_key.decode("latin-1").strip() if api_key else None,
    )


async def _read_body(gw: Gateway, headers: dict[bytes, bytes], receive: Receive) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > gw.max_body:
        raise PayloadTooLarge(f"Request body is larger than {gw.max_body} bytes.")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if message["type"] == "http.disconnect":
            raise HungUp
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HungUp
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > gw.max_body:
            raise PayloadTooLarge(f"Request body is larger than {gw.max_body} bytes.")
        parts.append(chunk)
    return b"".join(parts)


def parse_request(body: bytes, path_model: str | None) -> tuple[dict[str, Any], str]:
    """The request as a dict and the public model it asks for; 400 if unusable."""
    data = load_object(body)
    model = path_model or data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("Missing required parameter: 'model'.", param="model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "Missing required parameter: 'messages' (a non-empty array).", param="messages"
        )
    return data, model


async def _serve(
    gw: Gateway,
    caller: Caller,
    body: bytes,
    path_model: str | None,
    rec: Record,
    send: Send,
) -> None:
    rec.count_tokens = caller.tpm is not None
    data, model = parse_request(body, path_model)
    rec.asked = model
    if not caller.allows(model):  # before the lookup: a key learns nothing of other models
        raise Forbidden(f"This key may not use the model '{model}'.", param="model")
    targets = gw.table.get(model)
    if targets is None:
        raise NotFound(
            f"The model '{model}' does not exist on this gateway; GET /v1/models lists them.",
            param="model",
            code="model_not_found",
        )
    rec.model = model
    services = gw.services
    now = time.time()
    if caller.budget is not None:
        refused = services.budgets.check(caller.name, caller.budget, now)
        if refused is not None:
            raise refused
    if caller.rpm is not None or caller.tpm is not None:
        wait = await services.state.admit(caller.name, caller.rpm, caller.tpm, now)
        if wait is not None:
            raise RateLimited(
                f"Rate limit reached for key '{caller.name}' "
                f"({limits_text(caller.rpm, caller.tpm)}); "
                "retry after the time in the retry-after header.",
                wait,
            )
    stream = data.get("stream") is True
    rec.stream = stream
    options = data.get("stream_options")
    client_usage = isinstance(options, dict) and options.get("include_usage") is True

    bodies: dict[tuple[str, bool], bytes] = {}

    def body_for(target: Target) -> bytes:
        k = (target.deployment, target.reasoning)
        out = bodies.get(k)
        if out is None:
            out = bodies[k] = azure.rewrite_body(
                data, deployment=target.deployment, reasoning=target.reasoning, want_usage=True
            )
        return out

    ordered, recovers = order(targets, services.state.cooling_until, now, gw.rng)
    resp = await connect(
        services.upstream,
        services.state,
        gw.policy,
        ordered,
        recovers,
        body_for,
        services.metrics,
        rec.trace,
        buffer=not stream,  # a whole body can still fail over until it is complete
        attempt_log=services.attempt_log,
    )
    try:
        content_type = resp.headers.get("content-type", "")
        if stream and resp.status == 200 and "event-stream" in content_type:
            await _relay_stream(gw, resp, rec, send, client_usage)
        else:
            await _relay_body(gw, resp, rec, send, content_type)
    finally:
        await resp.aclose()


def _response_headers(gw: Gateway, resp: Response, rec: Record) -> list[tuple[bytes, bytes]]:
    out = [(b"x-request-id", rec.request_id.encode("latin-1"))]
    for name, value in resp.headers.items():
        passed = _passed_name(name)
        if passed is not None:
            out.append((passed, gw.redact.bytes(value.encode("latin-1"))))
    return out


@functools.lru_cache(maxsize=256)
def _passed_name(name: str) -> bytes | None:
    """The header's name to send on, or None: Azure's set of names is small and fixed."""
    lname = name.lower().encode("latin-1")
    return lname if lname.startswith(_PASS) else None


async def _relay_body(
    gw: Gateway, resp: Response, rec: Record, send: Send, content_type: str
) -> None:
    try:
        body = gw.redact.bytes(await resp.read())
    except StreamBroken as exc:
        raise _broken(rec, exc) from None
    rec.status = resp.status
    rec.ttft = time.perf_counter() - rec.started
    if resp.status == 200:
        usage, rec.answer_model = relay.usage_of(body)
        if usage is not None:
            rec.tokens = relay.token_counts(usage)
    headers = _response_headers(gw, resp, rec)
    headers.append((b"content-type", (content_type or "application/json").encode("latin-1")))
    headers.append((b"content-length", str(len(body)).encode()))
    rec.responded = True
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _relay_stream(
    gw: Gateway, resp: Response, rec: Record, send: Send, client_usage: bool
) -> None:
    headers = _response_headers(gw, resp, rec)
    headers.extend(_SSE_HEADERS)
    rec.status = 200
    rec.responded = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    sse = relay.SSEFilter(forward_usage=client_usage)
    redact = gw.redact.bytes
    try:
        async for data in resp.chunks():
            out = sse.feed(data)
            if out and not rec.ended:
                out = redact(out)  # whole events: a key cannot straddle two
                if rec.ttft is None:
                    rec.ttft = time.perf_counter() - rec.started
                # [DONE] ends the client's response in the same write (saves one
                # write(2) per stream); the upstream body is still read to its end
                # so its connection goes back to the pool.
                rec.ended = sse.done
                await send({"type": "http.response.body", "body": out, "more_body": not sse.done})
        tail = sse.close()
        if tail and not rec.ended:
            await send({"type": "http.response.body", "body": redact(tail), "more_body": True})
        if not sse.done:
            raise StreamBroken("the upstream stream ended without [DONE]")
    except StreamBroken as exc:
        if rec.ended:
            return  # broke after [DONE]: the client already has the whole answer
        err = _broken(rec, exc)
        if rec.trace.target is not None:
            cool_down(gw.services.state, gw.policy, rec.trace.target)
        event = relay.error_event(err.message)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    finally:
        if sse.usage is not None:
            rec.tokens = relay.token_counts(sse.usage)
            rec.answer_model = sse.model
    if not rec.ended:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _broken(rec: Record, exc: StreamBroken) -> GatewayError:
    target = rec.trace.target
    where = target.id if target else "upstream"
    rec.error = "upstream_stream_error"
    log.warning("stream from %s broke mid-response: %s", where, exc)
    return UpstreamFailed(f"The upstream deployment {where} failed mid-response: {exc}")


async def send_error(send: Send, exc: GatewayError, request_id: str) -> None:
    body = exc.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")),
        *exc.headers(),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _finish(gw: Gateway, rec: Record) -> None:
    duration = time.perf_counter() - rec.started
    services = gw.services
    model = rec.model
    services.metrics.request(model, rec.key, rec.status, duration, rec.ttft)
    services.recent.add(rec, duration)
    target = rec.trace.target
    cost = None
    if rec.tokens:
        cost = gw.prices.cost(target.id if target else None, rec.answer_model, model, rec.tokens)
        services.usage.record(rec.key, model, rec.tokens, cost)
        services.metrics.add_tokens(rec.key, model, rec.tokens)
        services.metrics.add_cost(rec.key, model, cost)
        now = time.time()
        if cost:
            services.budgets.add(rec.key, cost, now)
        total = rec.tokens.get("prompt_tokens", 0) + rec.tokens.get("completion_tokens", 0)
        if total and rec.count_tokens:
            services.spawn(services.state.add_tokens(rec.key, total, now))
    if services.access_log is not None:
        services.access_log.write(
            {
                "request_id": rec.request_id,
                "method": rec.method,
                "path": rec.path,
                "key": rec.key,
                "model": rec.asked or model,
                "resource": target.resource if target else None,
                "deployment": target.deployment if target else None,
                "status": rec.status,
                "stream": rec.stream,
                "attempts": rec.trace.attempts,
                "ttft_ms": round(rec.ttft * 1000, 2) if rec.ttft is not None else None,
                "duration_ms": round(duration * 1000, 2),
                "tokens": rec.tokens or None,
                "cost_usd": cost / NANO if cost is not None else None,
                "unpriced": bool(rec.tokens) and cost is None,
                "error": rec.error,
            }
        )
