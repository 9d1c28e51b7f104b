"""The hot path: every operation's request as one plain ASGI handler.

Authenticate from the headers, read the body (an unknown caller never gets a
byte of it read: its 401 goes out at once and app/listener.py drops the rest of
the body and closes), parse it once (the operation
says how), pick the deployments, open the upstream response through
`failover.connect`, then relay it: a body as bytes, a stream through the
operation's scanner. Nothing here names an operation: what differs between
chat, Responses and embeddings is data in `app.operations`. Nothing here
touches pydantic, FastAPI or stdlib json, and nothing runs per chunk but the
scanner and `send`.

A request naming a stored response (`previous_response_id`, `/responses/{id}`)
goes only to the resource that holds it and only for the gateway key that
created it (`app.affinity`); any other key gets the 404 an unknown id gets.

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

from app import estimate
from app.affinity import Owner, id_hash, not_found, on_resource, unavailable
from app.auth import Caller, bearer_token
from app.disconnect import Watch
from app.errors import (
    Forbidden,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ResponseNotFound,
    ResponseUnavailable,
    UpstreamFailed,
)
from app.failover import Trace, connect, cool_down
from app.gateway import Gateway
from app.operations import Answer, Operation, Parsed, Route, Scan
from app.operations.responses import stored_url
from app.pricing import NANO
from app.routing import Target, order
from app.upstream import Body, Response, StreamBroken

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("aoai_gateway")

_WANTED = (b"authorization", b"api-key", b"x-request-id", b"content-length", b"content-type")
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
    api: str = "-"
    path: str = ""
    method: str = "POST"
    key: str = "-"
    model: str = "-"  # the public model served (metrics label: only configured names)
    asked: str | None = None  # the model the request named, served or not
    status: int = 0
    responded: bool = False  # http.response.start was sent
    ended: bool = False  # the last body byte was sent: a disconnect now is no hang-up
    count_tokens: bool = False  # the caller has a tpm limit
    reserved: int = 0  # tokens reserved in the caller's tpm window when admitted ...
    admitted: float = 0.0  # ... at this time, settled in _finish
    data: Any = None  # the parsed request: an estimate's source if Azure's usage never comes
    relayed: int = 0  # content events of a stream relayed (about one token each)
    estimated: bool = False  # tokens are the gateway's estimate (app.estimate)
    stream: bool = False
    ttft: float | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    answer_model: str | None = None  # the `model` field of Azure's answer
    trace: Trace = field(default_factory=Trace)
    error: str | None = None
    response: str | None = None  # hash of the stored response's id the request names


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


async def handle(gw: Gateway, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    headers = _wanted_headers(scope)
    rec = Record(
        request_id=request_id(headers.get(b"x-request-id")),
        started=started,
        api=route.op.name,
        path=scope["path"],
        method=scope["method"],
    )
    if route.response_id is not None:  # logs show a hash of a stored response's id, not the id
        rec.response = id_hash(route.response_id)
        rec.path = rec.path.replace(route.response_id, "{id}")
    task = asyncio.current_task()
    assert task is not None
    watch = Watch(receive, task, rec)
    watches = gw.services.watches
    try:
        try:
            caller = authenticate(gw, headers)
            rec.key = caller.name
            rec.count_tokens = caller.tpm is not None
            body = await _read_body(gw, headers, receive)
            watches.arm(watch)
            if route.response_id is None:
                content_type = headers.get(b"content-type", b"application/json")
                await _create(gw, route, caller, body, content_type.decode("latin-1"), rec, send)
            else:
                await _stored(gw, route, caller, scope, rec, send)
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
        if name in _WANTED:
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


async def _admit(gw: Gateway, caller: Caller, now: float, rec: Record, data: Any = None) -> None:
    """The caller's own budget and rpm/tpm, on every route; a create's estimated
    tokens are reserved in a tpm window until `_finish` settles them."""
    if caller.budget is not None:
        refused = gw.services.budgets.check(caller.name, caller.budget, now)
        if refused is not None:
            raise refused
    if caller.rpm is None and caller.tpm is None:
        return
    reserve = estimate.reservation(data) if caller.tpm is not None and data is not None else 0
    wait = await gw.services.state.admit(caller.name, caller.rpm, caller.tpm, now, reserve)
    if wait is None:
        rec.reserved, rec.admitted = reserve, now
    else:
        raise RateLimited(
            f"Rate limit reached for key '{caller.name}' "
            f"({limits_text(caller.rpm, caller.tpm)}); "
            "retry after the time in the retry-after header.",
            wait,
        )


class _Create:
    """The upstream call of a create: the operation's URL and rewritten body per target."""

    __slots__ = ("_bodies", "addressed", "api", "content_type", "method", "op", "parsed")

    def __init__(self, op: Operation, parsed: Parsed) -> None:
        self.op = op
        self.api = op.name
        self.method = "POST"
        self.addressed = False
        ct = parsed.content_type
        self.content_type = None if ct == "application/json" else ct
        self.parsed = parsed
        self._bodies: dict[tuple[str, bool], Body] = {}

    def prepare(self, target: Target) -> tuple[str, Body]:
        k = (target.deployment, target.reasoning)
        body = self._bodies.get(k)
        if body is None:
            body = self._bodies[k] = self.op.rewrite(
                self.parsed, target.deployment, target.reasoning
            )
        return target.urls[self.api], body


@dataclass(slots=True)
class _Fixed:
    """An upstream call with one URL: a stored response on its own resource."""

    api: str
    method: str
    url: str
    body: bytes
    addressed: bool = True
    content_type: str | None = None

    def prepare(self, target: Target) -> tuple[str, bytes]:
        return self.url, self.body


async def _connect(
    gw: Gateway,
    ordered: list[Target],
    recovers: float | None,
    call: _Create | _Fixed,
    rec: Record,
    buffer: bool,
) -> Response:
    services = gw.services
    return await connect(
        services.upstream,
        services.state,
        gw.policy,
        ordered,
        recovers,
        call,
        services.metrics,
        rec.trace,
        buffer=buffer,
        attempt_log=services.attempt_log,
    )


async def _create(
    gw: Gateway,
    route: Route,
    caller: Caller,
    body: bytes,
    content_type: str,
    rec: Record,
    send: Send,
) -> None:
    op = route.op
    parsed = op.parse(body, route.model, content_type)
    del body  # a multipart upload is held once, by `parsed.form`
    model = rec.asked = parsed.model
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
    rec.data = parsed.data
    await _admit(gw, caller, now, rec, parsed.data)
    rec.stream = parsed.stream
    pinned = op.stored_id(parsed)
    if pinned is not None:
        owner = await services.state.owner(pinned, now)
        if owner is None:
            pinned = None  # never seen here (it may predate the gateway): routed as usual
        else:
            _check_owner(rec, caller, owner, pinned)
            targets = on_resource(targets, owner, pinned, model)
    ordered, recovers = order(targets, services.state.cooling_until, now, gw.rng)
    try:
        # a whole body can still fail over until it is complete
        resp = await _connect(gw, ordered, recovers, _Create(op, parsed), rec, not parsed.stream)
    except GatewayError as exc:
        if pinned is None:
            raise
        raise _unavailable(gw, pinned, targets[0], exc) from None
    remember = _rememberer(gw, caller, rec) if op.stores(parsed) else None
    try:
        answer_type = resp.headers.get("content-type", "")
        if parsed.stream and resp.status == 200 and "event-stream" in answer_type:
            await _relay_stream(gw, resp, rec, send, op.scan(parsed), remember)
        elif parsed.stream and resp.status == 200 and op.answer is Answer.BYTES:
            await _relay_bytes(gw, resp, rec, send, answer_type)
        else:
            await _relay_body(gw, resp, rec, send, answer_type, op, remember)
    finally:
        await resp.aclose()
    if rec.status == 200 and parsed.counts and rec.error is None:
        rec.tokens = {**rec.tokens, **parsed.counts}


async def _stored(
    gw: Gateway, route: Route, caller: Caller, scope: Scope, rec: Record, send: Send
) -> None:
    """`/responses/{id}[/input_items|/cancel]`: the owner's resource, for the owner's key."""
    response_id = route.response_id
    assert response_id is not None
    services = gw.services
    now = time.time()
    owner = await services.state.owner(response_id, now)
    if owner is None:
        raise not_found(response_id)
    _check_owner(rec, caller, owner, response_id)
    target = gw.holder(owner)
    if target is None:
        raise ResponseNotFound(
            f"Response '{response_id}' is stored on resource '{owner.resource}', which this "
            "gateway no longer routes to.",
        )
    rec.model = target.model
    await _admit(gw, caller, now, rec)
    query = scope.get("query_string", b"").decode("latin-1")
    method = scope["method"]
    stream = method == "GET" and "stream=true" in query.lower()
    rec.stream = stream
    url = stored_url(target.place, response_id, route.tail, query)
    body = b"{}" if method == "POST" else b""
    ordered, recovers = order((target,), services.state.cooling_until, now, gw.rng)
    try:
        call = _Fixed(route.op.name, method, url, body)
        resp = await _connect(gw, ordered, recovers, call, rec, not stream)
    except GatewayError as exc:
        raise _unavailable(gw, response_id, target, exc) from None
    try:
        content_type = resp.headers.get("content-type", "")
        if stream and resp.status == 200 and "event-stream" in content_type:
            await _relay_stream(gw, resp, rec, send, route.op.scan(None), None, count=False)
        else:
            await _relay_body(gw, resp, rec, send, content_type, None, None)
    finally:
        await resp.aclose()


def _check_owner(rec: Record, caller: Caller, owner: Owner, response_id: str) -> None:
    """Another key's stored response is answered exactly like an id that does not exist."""
    if owner.key != caller.name:
        rec.response = id_hash(response_id)
        log.warning(
            "key '%s' asked for a stored response of another key (id sha256 %s): answered 404",
            caller.name,
            rec.response,
        )
        raise not_found(response_id)


def _unavailable(
    gw: Gateway, response_id: str, target: Target, exc: GatewayError
) -> ResponseUnavailable:
    return unavailable(response_id, target, exc, gw.services.state.cooling_until, time.time())


def _rememberer(gw: Gateway, caller: Caller, rec: Record) -> Callable[[str], None]:
    def remember(response_id: str) -> None:
        target = rec.trace.target
        if target is not None:
            owner = Owner(target.resource, target.deployment, caller.name)
            gw.services.state.remember(response_id, owner, time.time())

    return remember


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
    gw: Gateway,
    resp: Response,
    rec: Record,
    send: Send,
    content_type: str,
    op: Operation | None,
    remember: Callable[[str], None] | None,
) -> None:
    """A whole answer; `op` reads its usage (None: nothing is counted)."""
    try:
        body = gw.redact.bytes(await resp.read())
    except StreamBroken as exc:
        raise _broken(rec, exc) from None
    rec.status = resp.status
    rec.ttft = time.perf_counter() - rec.started
    if resp.status == 200 and op is not None:
        facts = op.facts(body, content_type)
        rec.tokens = facts.tokens
        rec.answer_model = facts.model
        if remember is not None and facts.response_id is not None:
            remember(facts.response_id)
    headers = _response_headers(gw, resp, rec)
    headers.append((b"content-type", (content_type or "application/json").encode("latin-1")))
    headers.append((b"content-length", str(len(body)).encode()))
    rec.responded = True
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _relay_stream(
    gw: Gateway,
    resp: Response,
    rec: Record,
    send: Send,
    scan: Scan,
    remember: Callable[[str], None] | None,
    *,
    count: bool = True,
) -> None:
    headers = _response_headers(gw, resp, rec)
    headers.extend(_SSE_HEADERS)
    rec.status = 200
    rec.responded = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    redact = gw.redact.bytes
    try:
        async for data in resp.chunks():
            out = scan.feed(data)
            if remember is not None and scan.response_id is not None:
                remember(scan.response_id)  # as soon as it is known: a cancel may follow
                remember = None
            if out and not rec.ended:
                out = redact(out)  # whole events: a key cannot straddle two
                if rec.ttft is None:
                    rec.ttft = time.perf_counter() - rec.started
                # The end event closes the client's response in the same write (saves
                # one write(2) per stream); the upstream body is still read to its end
                # so its connection goes back to the pool.
                rec.ended = scan.done
                await send({"type": "http.response.body", "body": out, "more_body": not scan.done})
        tail = scan.close()
        if tail and not rec.ended:
            await send({"type": "http.response.body", "body": redact(tail), "more_body": True})
        if not scan.done:
            raise StreamBroken("the upstream stream ended before its last event")
    except StreamBroken as exc:
        if rec.ended:
            return  # broke after the end: the client already has the whole answer
        err = _broken(rec, exc)
        if rec.trace.target is not None:
            cool_down(gw.services.state, gw.policy, rec.trace.target)
        await send(
            {"type": "http.response.body", "body": scan.broken(err.message), "more_body": True}
        )
    finally:
        rec.relayed = scan.relayed()
        if count:
            tokens = scan.tokens()
            if tokens:
                rec.tokens = tokens
                rec.answer_model = scan.model
        if remember is not None and scan.response_id is not None:
            remember(scan.response_id)
    if not rec.ended:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_bytes(
    gw: Gateway, resp: Response, rec: Record, send: Send, content_type: str
) -> None:
    """Audio as it is made: each read forwarded at once, under the upstream's content type.

    Not redacted (binary audio carries no key). A stream cut short upstream cannot be
    marked in-band: the response is left unfinished, so the client sees the connection
    end before the body did.
    """
    headers = _response_headers(gw, resp, rec)
    headers.append((b"content-type", content_type.encode("latin-1")))
    rec.status = 200
    rec.responded = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for data in resp.chunks():
            if data:
                if rec.ttft is None:
                    rec.ttft = time.perf_counter() - rec.started
                await send({"type": "http.response.body", "body": data, "more_body": True})
    except StreamBroken as exc:
        _broken(rec, exc)
        if rec.trace.target is not None:
            cool_down(gw.services.state, gw.policy, rec.trace.target)
        return
    rec.ended = True
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
    services.recent.add(rec, duration)
    target = rec.trace.target
    cost = None
    now = time.time()
    unfinished = rec.status == 499 or rec.error == "upstream_stream_error"
    if not rec.tokens and rec.data is not None and target is not None and unfinished:
        # the client left (or the stream broke) before Azure's usage: what is known,
        # marked as estimated
        rec.tokens = estimate.abandoned(rec.data, rec.relayed)
        rec.estimated = True
    if rec.tokens:
        cost = gw.prices.cost(target.id if target else None, rec.answer_model, model, rec.tokens)
        services.usage.record(rec.key, model, rec.tokens, cost, rec.estimated)
        services.metrics.add_tokens(rec.api, rec.key, model, rec.tokens)
        services.metrics.add_cost(rec.key, model, cost)
        if cost:
            services.budgets.add(rec.key, cost, now)
    used = rec.tokens.get("prompt_tokens", 0) + rec.tokens.get("completion_tokens", 0)
    if rec.reserved or (used and rec.count_tokens):
        state = services.state
        services.spawn(state.settle(rec.key, rec.admitted or now, rec.reserved, used, now))
    services.metrics.request(rec.api, model, rec.key, rec.status, duration, rec.ttft)  # the last
    if services.access_log is not None:
        entry = {
            "request_id": rec.request_id,
            "method": rec.method,
            "path": rec.path,
            "api": rec.api,
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
            "estimated": rec.estimated,
            "error": rec.error,
        }
        if rec.response is not None:
            entry["response_id_sha256"] = rec.response
        services.access_log.write(entry)
