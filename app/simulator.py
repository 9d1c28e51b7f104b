"""Simulated Azure OpenAI / Foundry resource: a lean pure-ASGI app for tests, benchmarks and demos.

One `Simulator` is one Azure resource: its endpoint, api keys and deployments. It serves
`POST /openai/v1/chat/completions` (deployment = body ``model``) and
`POST /openai/deployments/{deployment}/chat/completions?api-version=X`, with Azure's
status codes, error bodies, headers and streaming chunk shapes, plus injectable faults and
admin routes under ``/_sim/``.

Token accounting (deterministic, so tests can compare it with what a gateway counted):

* text of a message = its ``content`` if a string, else the ``text`` of its
  ``{"type": "text"}`` parts joined by single spaces (other parts and fields ignored);
* ``prompt_tokens`` = sum over messages of (whitespace-separated words in its text + 3),
  at least 1;
* reply = ``SimConfig.reply`` if set, else ``"You said: " + <text of the last user message>``
  cut to 200 characters; ``max_completion_tokens`` (else ``max_tokens``) caps the reply to
  that many words, re-joined by single spaces, with ``finish_reason`` ``"length"``;
* ``completion_tokens`` = words in the reply, plus ``REASONING_TOKENS`` for reasoning
  deployments (which also report them as ``completion_tokens_details.reasoning_tokens``);
* ``total_tokens`` = ``prompt_tokens + completion_tokens``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

FAULT_MODES: Final = frozenset(
    {"429", "500", "hang", "drop", "content_filter", "annotations", "slow"}
)
REASONING_TOKENS: Final = 16
RECORDED_REQUESTS: Final = 100
MAX_REPLY_CHARS: Final = 200

_V1_PATH: Final = "/openai/v1/chat/completions"
_LEGACY_PREFIX: Final = "/openai/deployments/"
_LEGACY_SUFFIX: Final = "/chat/completions"
_REASONING_PREFIXES: Final = ("o1", "o3", "o4", "gpt-5")
# Azure's behaviour, written out here on purpose rather than imported from
# app.azure: if the gateway's list were wrong, a shared list would hide it.
_UNSUPPORTED_FOR_REASONING: Final = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)
_MODEL_VERSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "gpt-4o": "gpt-4o-2024-11-20",
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
        "o3-mini": "o3-mini-2025-01-31",
        "gpt-5.2-chat": "gpt-5.2-chat-2025-12-11",
    }
)
_FINGERPRINT: Final = "fp_ee1d74bde0"

# --- static JSON fragments -------------------------------------------------------------------

_SAFE: Final = b'{"filtered":false,"severity":"safe"}'
_NOT_DETECTED: Final = b'{"filtered":false,"detected":false}'
_PROMPT_CFR: Final = (
    b'{"hate":' + _SAFE + b',"jailbreak":' + _NOT_DETECTED + b',"self_harm":' + _SAFE
    + b',"sexual":' + _SAFE + b',"violence":' + _SAFE + b"}"
)  # fmt: skip
_COMPLETION_CFR: Final = (
    b'{"hate":' + _SAFE + b',"protected_material_code":' + _NOT_DETECTED
    + b',"protected_material_text":' + _NOT_DETECTED + b',"self_harm":' + _SAFE
    + b',"sexual":' + _SAFE + b',"violence":' + _SAFE + b"}"
)  # fmt: skip
_PROMPT_FILTER_RESULTS: Final = (
    b'[{"prompt_index":0,"content_filter_results":' + _PROMPT_CFR + b"}]"
)

_ERR_UNAUTHORIZED: Final = (
    b'{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong'
    b" API endpoint. Make sure to provide a valid key for an active subscription and use a"
    b' correct regional API endpoint for your resource."}}'
)
_ERR_NOT_FOUND: Final = b'{"error":{"code":"404","message":"Resource not found"}}'
_ERR_DEPLOYMENT: Final = (
    b'{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource'
    b" does not exist. If you created the deployment within the last 5 minutes, please wait a"
    b' moment and try again."}}'
)
_ERR_INTERNAL: Final = (
    b'{"error":{"code":"InternalServerError","message":"The server had an error while'
    b' processing your request. Sorry about that!"}}'
)
_ERR_CONTENT_FILTER: Final = (
    b'{"error":{"message":"The response was filtered due to the prompt triggering Azure'
    b" OpenAI's content management policy. Please modify your prompt and retry. To learn more"
    b" about our content filtering policies please read our documentation:"
    b' https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt",'
    b'"code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation",'
    b'"content_filter_result":{"hate":{"filtered":true,"severity":"high"},"jailbreak":'
    + _NOT_DETECTED + b',"self_harm":' + _SAFE + b',"sexual":' + _SAFE + b',"violence":'
    + _SAFE + b"}}}}"
)  # fmt: skip
_ERR_429: Final = (
    b'{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under'
    b" Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current"
    b' OpenAI S0 pricing tier. Please retry after %d seconds."}}'
)
_USAGE: Final = (
    b'{"completion_tokens":%d,"completion_tokens_details":{"accepted_prediction_tokens":0,'
    b'"audio_tokens":0,"reasoning_tokens":%d,"rejected_prediction_tokens":0},'
    b'"prompt_tokens":%d,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},'
    b'"total_tokens":%d}'
)

_CT_JSON: Final = (b"content-type", b"application/json")
_CT_SSE: Final = (b"content-type", b"text/event-stream")
_RATELIMIT: Final = (
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-remaining-tokens", b"999000"),
)
_DONE: Final = b"data: [DONE]\n\n"
_BAD_JSON: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't"
    " using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was"
    " sent was not valid JSON. %s)"
)


# --- public data types -----------------------------------------------------------------------


@dataclass
class SimConfig:
    """Static configuration of one simulated resource."""

    keys: list[str] = field(default_factory=lambda: ["sim-key-1", "sim-key-2"])
    deployments: list[str] = field(
        default_factory=lambda: ["gpt-4o", "gpt-4o-mini", "o3-mini", "gpt-5.2-chat"]
    )
    region: str = "eastus"
    chunks: int = 8
    chunk_delay: float = 0.0
    latency: float = 0.0
    reply: str | None = None

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError("chunks must be >= 1")


@dataclass
class Fault:
    """An injected failure; ``count=None`` applies until reset."""

    mode: str
    deployment: str = "*"
    count: int | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    after_chunks: int = 2
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")


@dataclass
class Stats:
    """Request counters; dict keys are strings, as in ``GET /_sim/stats``."""

    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_deployment: dict[str, int] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _Answer:
    """A computed completion."""

    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    model: str


# --- pure helpers ----------------------------------------------------------------------------


def is_reasoning(deployment: str) -> bool:
    """Whether a deployment name denotes a reasoning model (o1/o3/o4/gpt-5, not ``-chat``)."""
    return deployment.startswith(_REASONING_PREFIXES) and not deployment.endswith("-chat")


def model_version(deployment: str) -> str:
    """The model name Azure reports for a deployment."""
    return _MODEL_VERSIONS.get(deployment, deployment)


def message_text(content: Any) -> str:
    """Text of a message ``content``: a string, or text parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Words of every message text + 3 per message, at least 1."""
    return max(1, sum(len(message_text(m.get("content")).split()) + 3 for m in messages))


def default_reply(messages: list[Mapping[str, Any]]) -> str:
    """``"You said: <last user text>"`` cut to 200 characters."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = message_text(last.get("content")) if last is not None else ""
    return ("You said: " + text)[:MAX_REPLY_CHARS]


def cap_reply(reply: str, limit: int | None) -> tuple[str, str]:
    """Cut ``reply`` to ``limit`` words; returns (text, finish_reason)."""
    if limit is None:
        return reply, "stop"
    words = reply.split()
    if len(words) <= limit:
        return reply, "stop"
    return " ".join(words[:limit]), "length"


def split_pieces(text: str, n: int) -> list[str]:
    """Split ``text`` into at most ``n`` non-empty pieces of near-equal length."""
    size = len(text)
    bounds = [i * size // n for i in range(n + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def usage_json(answer: _Answer) -> bytes:
    """The ``usage`` object as JSON bytes."""
    total = answer.prompt_tokens + answer.completion_tokens
    return _USAGE % (
        answer.completion_tokens,
        answer.reasoning_tokens,
        answer.prompt_tokens,
        total,
    )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> bytes:
    """An OpenAI-style ``invalid_request_error`` body."""
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return orjson.dumps({"error": err})


def validate_request(body: Mapping[str, Any], reasoning: bool) -> bytes | None:
    """Return a 400 error body if the chat request is invalid, else None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        if messages is None:
            return invalid_request("Missing required parameter: 'messages'.", "messages")
        return invalid_request(
            "Invalid 'messages': expected a non-empty array.", "messages", "invalid_value"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return invalid_request(
                f"Invalid type for 'messages[{i}]': expected an object.",
                f"messages[{i}]",
                "invalid_type",
            )
    if reasoning:
        for name, value in body.items():
            if name in _UNSUPPORTED_FOR_REASONING and value is not None:
                hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
                return invalid_request(
                    f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                    name,
                    "unsupported_parameter",
                )
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            return invalid_request(
                f"Invalid type for '{name}': expected an integer.", name, "invalid_type"
            )
        if value < 1:
            return invalid_request(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                name,
                "integer_below_min_value",
            )
    return None


def compute_answer(body: Mapping[str, Any], deployment: str, fixed_reply: str | None) -> _Answer:
    """Build the deterministic completion for a validated request body."""
    messages: list[Mapping[str, Any]] = body["messages"]
    reasoning = is_reasoning(deployment)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    base = fixed_reply if fixed_reply is not None else default_reply(messages)
    reply, finish = cap_reply(base, limit)
    reasoning_tokens = REASONING_TOKENS if reasoning else 0
    return _Answer(
        reply=reply,
        finish_reason=finish,
        prompt_tokens=count_prompt_tokens(messages),
        completion_tokens=len(reply.split()) + reasoning_tokens,
        reasoning_tokens=reasoning_tokens,
        model=model_version(deployment),
    )


def completion_json(answer: _Answer, completion_id: str, created: int) -> bytes:
    """A non-stream ``chat.completion`` body."""
    return b"".join(
        (
            b'{"choices":[{"content_filter_results":',
            _COMPLETION_CFR,
            b',"finish_reason":"',
            answer.finish_reason.encode(),
            b'","index":0,"logprobs":null,"message":{"annotations":[],"content":',
            orjson.dumps(answer.reply),
            b',"refusal":null,"role":"assistant"}}],"created":',
            b"%d" % created,
            b',"id":"',
            completion_id.encode(),
            b'","model":',
            orjson.dumps(answer.model),
            b',"object":"chat.completion","prompt_filter_results":',
            _PROMPT_FILTER_RESULTS,
            b',"system_fingerprint":"',
            _FINGERPRINT.encode(),
            b'","usage":',
            usage_json(answer),
            b"}",
        )
    )


@dataclass(frozen=True, slots=True)
class _StreamFrames:
    """Pre-rendered SSE byte fragments for one streamed answer."""

    prompt_filter: bytes
    role: bytes
    content_head: bytes
    content_tail: bytes
    finish: bytes
    usage: bytes | None
    annotation_head: bytes
    annotation_tail: bytes


def stream_frames(answer: _Answer, completion_id: str, created: int, usage: bool) -> _StreamFrames:
    """Render the fixed parts of every SSE event of a stream."""
    null_usage = b',"usage":null' if usage else b""
    tail = b"".join(
        (
            b'],"created":',
            b"%d" % created,
            b',"id":"',
            completion_id.encode(),
            b'","model":',
            orjson.dumps(answer.model),
            b',"object":"chat.completion.chunk","system_fingerprint":"',
            _FINGERPRINT.encode(),
            b'"',
        )
    )
    end = null_usage + b"}\n\n"
    usage_frame = None
    if usage:
        usage_frame = b'data: {"choices":[' + tail + b',"usage":' + usage_json(answer) + b"}\n\n"
    return _StreamFrames(
        prompt_filter=b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
        b'"prompt_filter_results":' + _PROMPT_FILTER_RESULTS + end,
        role=b'data: {"choices":[{"content_filter_results":{},"delta":{"content":"",'
        b'"refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}'
        + tail + end,
        content_head=b'data: {"choices":[{"content_filter_results":' + _COMPLETION_CFR
        + b',"delta":{"content":',
        content_tail=b'},"finish_reason":null,"index":0,"logprobs":null}' + tail + end,
        finish=b'data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"'
        + answer.finish_reason.encode() + b'","index":0,"logprobs":null}' + tail + end,
        usage=usage_frame,
        annotation_head=b'data: {"choices":[{"content_filter_offsets":',
        annotation_tail=b',"content_filter_results":' + _COMPLETION_CFR
        + b',"finish_reason":null,"index":0}],"created":0,"id":"","model":"","object":""'
        + end,
    )  # fmt: skip


def retry_headers(fault: Fault) -> tuple[Headers, int]:
    """429 retry headers and the seconds quoted in the message."""
    headers: Headers = []
    seconds: int | None = None
    if fault.retry_after is not None:
        seconds = math.ceil(fault.retry_after)
    elif fault.retry_after_ms is not None:
        seconds = math.ceil(fault.retry_after_ms / 1000)
    if seconds is not None:
        headers.append((b"retry-after", b"%d" % seconds))
    if fault.retry_after_ms is not None:
        ms = b"%d" % fault.retry_after_ms
        headers.append((b"retry-after-ms", ms))
        headers.append((b"x-ms-retry-after-ms", ms))
    return headers, seconds if seconds is not None else 1


def fault_from_json(obj: Any) -> Fault:
    """Build a Fault from a decoded JSON object; raises ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError("fault must be a JSON object")
    names = {f.name for f in dataclasses.fields(Fault)}
    unknown = set(obj) - names
    if unknown:
        raise ValueError(f"unknown fault fields: {sorted(unknown)}")
    kwargs = dict(obj)
    if isinstance(kwargs.get("mode"), int):
        kwargs["mode"] = str(kwargs["mode"])
    checks: dict[str, tuple[type, ...]] = {
        "mode": (str,),
        "deployment": (str,),
        "count": (int, type(None)),
        "retry_after": (int, float, type(None)),
        "retry_after_ms": (int, type(None)),
        "after_chunks": (int,),
        "delay": (int, float),
    }
    for name, value in kwargs.items():
        if not isinstance(value, checks[name]) or isinstance(value, bool):
            raise ValueError(f"invalid type for fault field {name!r}")
    try:
        return Fault(**kwargs)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def request_id() -> bytes:
    """A random UUID-formatted id (cheaper than ``uuid.uuid4``)."""
    h = os.urandom(16).hex().encode()
    return b"%s-%s-4%s-%s-%s" % (h[:8], h[8:12], h[13:16], h[16:20], h[20:])


def key_label(key: str) -> str:
    """Stats label of a key: its first 4 characters and an ellipsis."""
    return key[:4] + "\u2026"


def query_has_api_version(query: bytes) -> bool:
    """Whether the query string has a non-empty ``api-version``."""
    return any(
        p.startswith(b"api-version=") and len(p) > len(b"api-version=") for p in query.split(b"&")
    )


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key from ``api-key`` or ``Authorization: Bearer``; ``api-key`` wins."""
    bearer = None
    for name, value in headers:
        if name == b"api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
    return bearer


async def read_body(receive: Receive) -> bytes | None:
    """Read the whole request body; None if the client disconnected."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def wait_disconnect(receive: Receive, seconds: float | None) -> bool:
    """Wait up to ``seconds`` (None: forever); True if the client disconnected meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


# --- the ASGI app ----------------------------------------------------------------------------


class Simulator:
    """One simulated Azure OpenAI resource (an ASGI app) and its mutable state."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.stats = Stats()
        self.faults: list[Fault] = []
        self._labels = {k.encode(): key_label(k) for k in self.config.keys}
        self._active = dict(self._labels)
        self._deployments = frozenset(self.config.deployments)
        self._recorded: deque[tuple[str, bytes, Headers, bytes]] = deque(maxlen=RECORDED_REQUESTS)
        self._base_headers: Headers = [(b"x-ms-region", self.config.region.encode())]

    # programmatic control

    def add_fault(self, fault: Fault) -> None:
        """Inject a fault (a copy is stored; first matching fault wins)."""
        if fault.count != 0:
            self.faults.append(dataclasses.replace(fault))

    def revoke_key(self, key: str) -> None:
        """Stop accepting ``key``."""
        self._active.pop(key.encode(), None)

    def reset(self) -> None:
        """Clear faults, revoked keys, stats (except in_flight) and recorded requests."""
        self.faults.clear()
        self._active = dict(self._labels)
        self.stats = Stats(in_flight=self.stats.in_flight)
        self._recorded.clear()

    def recorded_requests(self) -> list[dict[str, Any]]:
        """The last recorded chat requests, newest last, with bodies parsed."""
        return [
            {
                "path": path,
                "query": query.decode("latin-1"),
                "headers": {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in headers},
                "body": _parse_or_none(body),
            }
            for path, query, headers, body in self._recorded
        ]

    # ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (http and lifespan)."""
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/_sim/") or path == "/healthz":
                await self._admin(scope, receive, send)
            else:
                await self._chat(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    # helpers sending responses

    def _headers(self, extra: Iterable[tuple[bytes, bytes]] = ()) -> Headers:
        rid = request_id()
        headers = [*self._base_headers, (b"apim-request-id", rid), (b"x-request-id", rid)]
        headers.extend(extra)
        return headers

    async def _json(
        self, send: Send, status: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
    ) -> int:
        headers = self._headers(extra)
        headers.append(_CT_JSON)
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    # admin routes

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", "/healthz"):
            await self._json(send, 200, b'{"status":"ok"}')
        elif route == ("GET", "/_sim/stats"):
            await self._json(send, 200, orjson.dumps(self.stats.as_dict()))
        elif route == ("GET", "/_sim/requests"):
            await self._json(send, 200, orjson.dumps(self.recorded_requests()))
        elif route == ("GET", "/_sim/faults"):
            await self._json(send, 200, orjson.dumps([dataclasses.asdict(f) for f in self.faults]))
        elif route == ("POST", "/_sim/reset"):
            self.reset()
            await self._empty(send)
        elif route == ("POST", "/_sim/faults"):
            try:
                self.add_fault(fault_from_json(_parse_or_none(body)))
            except ValueError as exc:
                await self._json(send, 400, invalid_request(str(exc)))
                return
            await self._empty(send)
        elif route == ("POST", "/_sim/revoke"):
            obj = _parse_or_none(body)
            key = obj.get("key") if isinstance(obj, dict) else None
            if not isinstance(key, str):
                await self._json(send, 400, invalid_request('body must be {"key": "..."}'))
                return
            self.revoke_key(key)
            await self._empty(send)
        else:
            await self._json(send, 404, _ERR_NOT_FOUND)

    async def _empty(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": self._headers()})
        await send({"type": "http.response.body", "body": b""})

    # chat routes

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.requests += 1
        self.stats.in_flight += 1
        try:
            status = await self._chat_inner(scope, receive, send)
        finally:
            self.stats.in_flight -= 1
        stats = self.stats  # re-read: a reset may have replaced it meanwhile
        if status is None:
            stats.disconnects += 1
        else:
            key = str(status)
            stats.by_status[key] = stats.by_status.get(key, 0) + 1

    async def _chat_inner(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        """Serve one chat request; returns the status sent, or None if the client left."""
        body = await read_body(receive)
        if body is None:
            return None
        path: str = scope["path"]
        query: bytes = scope["query_string"]
        headers: Headers = scope["headers"]
        self._recorded.append((path, query, headers, body))
        if self.config.latency > 0 and await wait_disconnect(receive, self.config.latency):
            return None

        legacy = None
        if path == _V1_PATH:
            pass
        elif path.startswith(_LEGACY_PREFIX) and path.endswith(_LEGACY_SUFFIX):
            legacy = path[len(_LEGACY_PREFIX) : -len(_LEGACY_SUFFIX)]
            if not legacy or "/" in legacy or not query_has_api_version(query):
                return await self._json(send, 404, _ERR_NOT_FOUND)
        else:
            return await self._json(send, 404, _ERR_NOT_FOUND)
        if scope["method"] != "POST":
            return await self._json(send, 404, _ERR_NOT_FOUND)

        key = presented_key(headers)
        label = self._active.get(key) if key is not None else None
        if label is None:
            return await self._json(send, 401, _ERR_UNAUTHORIZED)
        self.stats.by_key[label] = self.stats.by_key.get(label, 0) + 1
        if legacy is not None and legacy not in self._deployments:
            return await self._json(send, 404, _ERR_DEPLOYMENT)

        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return await self._json(send, 400, invalid_request(_BAD_JSON % exc))
        if not isinstance(data, dict):
            return await self._json(send, 400, invalid_request("Request body must be an object."))
        if legacy is None:
            model = data.get("model")
            if not isinstance(model, str) or not model:
                msg = "you must provide a model parameter"
                return await self._json(send, 400, invalid_request(msg))
            deployment = model
            if deployment not in self._deployments:
                return await self._json(send, 404, _ERR_DEPLOYMENT)
        else:
            deployment = legacy
        by_dep = self.stats.by_deployment
        by_dep[deployment] = by_dep.get(deployment, 0) + 1

        fault = self._take_fault(deployment) if self.faults else None
        if fault is not None:
            status = await self._early_fault(fault, receive, send)
            if status != 0:
                return status

        error = validate_request(data, is_reasoning(deployment))
        if error is not None:
            return await self._json(send, 400, error)
        answer = compute_answer(data, deployment, self.config.reply)
        completion_id = "chatcmpl-" + os.urandom(15).hex()[:29]
        created = int(time.time())
        if data.get("stream") is True:
            options = data.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            frames = stream_frames(answer, completion_id, created, usage)
            return await self._stream(receive, send, answer, frames, fault)
        payload = completion_json(answer, completion_id, created)
        if fault is not None and fault.mode == "drop":
            return await self._drop_json(send, payload)
        return await self._json(send, 200, payload, _RATELIMIT)

    def _take_fault(self, deployment: str) -> Fault | None:
        """First fault matching ``deployment``, consuming one use of it."""
        for i, fault in enumerate(self.faults):
            if fault.deployment in ("*", deployment):
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        del self.faults[i]
                return fault
        return None

    async def _early_fault(self, fault: Fault, receive: Receive, send: Send) -> int | None:
        """Apply a fault that acts before the answer; 0 means go on normally."""
        mode = fault.mode
        if mode == "429":
            extra, seconds = retry_headers(fault)
            return await self._json(send, 429, _ERR_429 % seconds, extra)
        if mode == "500":
            return await self._json(send, 500, _ERR_INTERNAL)
        if mode == "content_filter":
            return await self._json(send, 400, _ERR_CONTENT_FILTER)
        if mode == "hang":
            await wait_disconnect(receive, None)
            return None
        if mode == "slow" and fault.delay > 0 and await wait_disconnect(receive, fault.delay):
            return None
        return 0

    async def _drop_json(self, send: Send, payload: bytes) -> int:
        """Announce the full body, send half of it, then return without finishing."""
        headers = self._headers(_RATELIMIT)
        headers.append(_CT_JSON)
        headers.append((b"content-length", b"%d" % len(payload)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        half = payload[: len(payload) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        return 200

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        answer: _Answer,
        frames: _StreamFrames,
        fault: Fault | None,
    ) -> int | None:
        """Send an SSE stream; may be cut short by a "drop" fault or a disconnect."""
        headers = self._headers(_RATELIMIT)
        headers.append(_CT_SSE)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": frames.prompt_filter, "more_body": True})
        await send({"type": "http.response.body", "body": frames.role, "more_body": True})
        mode = fault.mode if fault is not None else None
        limit = fault.after_chunks if fault is not None and mode == "drop" else -1
        delay = self.config.chunk_delay
        offset = 0
        for n, piece in enumerate(split_pieces(answer.reply, self.config.chunks)):
            if n == limit:
                return 200
            if n and delay > 0 and await wait_disconnect(receive, delay):
                return None
            event = frames.content_head + orjson.dumps(piece) + frames.content_tail
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if mode == "annotations":
                end = offset + len(piece)
                offsets = b'{"check_offset":%d,"start_offset":%d,"end_offset":%d}' % (
                    offset,
                    offset,
                    end,
                )
                event = frames.annotation_head + offsets + frames.annotation_tail
                await send({"type": "http.response.body", "body": event, "more_body": True})
                offset = end
        if mode == "drop":
            return 200
        await send({"type": "http.response.body", "body": frames.finish, "more_body": True})
        if frames.usage is not None:
            await send({"type": "http.response.body", "body": frames.usage, "more_body": True})
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})
        return 200


def _parse_or_none(body: bytes) -> Any:
    """Parsed JSON, or None if empty or invalid."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer lifespan startup/shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- running ---------------------------------------------------------------------------------


class _QuietDrop(logging.Filter):
    """Hide uvicorn's error line for responses cut on purpose by the "drop" fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def quiet_drop_logs() -> None:
    """Install the drop-noise filter on uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrop) for f in logger.filters):
        logger.addFilter(_QuietDrop())


def run(host: str, port: int, config: SimConfig | None = None) -> None:
    """Serve a Simulator with uvicorn until interrupted."""
    import uvicorn

    quiet_drop_logs()
    uvicorn.run(
        Simulator(config),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> tuple[str, int, SimConfig]:
    """Parse CLI arguments into (host, port, config)."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m app.simulator", description="Simulated Azure OpenAI resource."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--keys", type=_csv, default=d.keys, help="comma-separated api keys")
    p.add_argument("--deployments", type=_csv, default=d.deployments, help="comma-separated")
    p.add_argument("--region", default=d.region)
    p.add_argument("--chunks", type=int, default=d.chunks)
    p.add_argument("--chunk-delay", type=float, default=d.chunk_delay)
    p.add_argument("--latency", type=float, default=d.latency)
    p.add_argument("--reply", default=None, help="fixed reply text")
    a = p.parse_args(argv)
    config = SimConfig(
        keys=a.keys,
        deployments=a.deployments,
        region=a.region,
        chunks=a.chunks,
        chunk_delay=a.chunk_delay,
        latency=a.latency,
        reply=a.reply,
    )
    return a.host, a.port, config


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    host, port, config = parse_args(argv)
    run(host, port, config)


if __name__ == "__main__":
    main()
