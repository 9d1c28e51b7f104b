"""Chat completions: ``POST /openai/v1/chat/completions`` (deployment = body ``model``) and
``POST /openai/deployments/{deployment}/chat/completions?api-version=X``.

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

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from app.simulator.asgi import RATELIMIT, wait_disconnect
from app.simulator.errors import NOT_DETECTED, SAFE, invalid_request, operation_not_supported
from app.simulator.faults import Fault
from app.simulator.models import (
    MAX_REPLY_CHARS,
    REASONING_TOKENS,
    UNSUPPORTED_FOR_REASONING,
    cap_reply,
    content_text,
    is_embedding,
    is_reasoning,
    model_version,
    split_pieces,
)
from app.simulator.operation import Call, Operation, deployment_route

_LEGACY_SUFFIX: Final = "/chat/completions"
_FINGERPRINT: Final = "fp_ee1d74bde0"

# --- static JSON fragments -------------------------------------------------------------------

_PROMPT_CFR: Final = (
    b'{"hate":' + SAFE + b',"jailbreak":' + NOT_DETECTED + b',"self_harm":' + SAFE
    + b',"sexual":' + SAFE + b',"violence":' + SAFE + b"}"
)  # fmt: skip
_COMPLETION_CFR: Final = (
    b'{"hate":' + SAFE + b',"protected_material_code":' + NOT_DETECTED
    + b',"protected_material_text":' + NOT_DETECTED + b',"self_harm":' + SAFE
    + b',"sexual":' + SAFE + b',"violence":' + SAFE + b"}"
)  # fmt: skip
_PROMPT_FILTER_RESULTS: Final = (
    b'[{"prompt_index":0,"content_filter_results":' + _PROMPT_CFR + b"}]"
)
_USAGE: Final = (
    b'{"completion_tokens":%d,"completion_tokens_details":{"accepted_prediction_tokens":0,'
    b'"audio_tokens":0,"reasoning_tokens":%d,"rejected_prediction_tokens":0},'
    b'"prompt_tokens":%d,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},'
    b'"total_tokens":%d}'
)
_DONE: Final = b"data: [DONE]\n\n"


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


def message_text(content: Any) -> str:
    """Text of a message ``content``: a string, or text parts joined by spaces."""
    return content_text(content)


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Words of every message text + 3 per message, at least 1."""
    return max(1, sum(len(message_text(m.get("content")).split()) + 3 for m in messages))


def default_reply(messages: list[Mapping[str, Any]]) -> str:
    """``"You said: <last user text>"`` cut to 200 characters."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = message_text(last.get("content")) if last is not None else ""
    return ("You said: " + text)[:MAX_REPLY_CHARS]


def usage_json(answer: _Answer) -> bytes:
    """The ``usage`` object as JSON bytes."""
    total = answer.prompt_tokens + answer.completion_tokens
    return _USAGE % (
        answer.completion_tokens,
        answer.reasoning_tokens,
        answer.prompt_tokens,
        total,
    )


def reasoning_param_error(body: Mapping[str, Any], unsupported: frozenset[str]) -> bytes | None:
    """Azure's 400 for the first parameter a reasoning model does not take, else None."""
    for name, value in body.items():
        if name in unsupported and value is not None:
            hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
            return invalid_request(
                f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                name,
                "unsupported_parameter",
            )
    return None


def positive_int_error(body: Mapping[str, Any], names: Iterable[str]) -> bytes | None:
    """A 400 body if one of ``names`` is present but not an integer >= 1, else None."""
    for name in names:
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
        error = reasoning_param_error(body, UNSUPPORTED_FOR_REASONING)
        if error is not None:
            return error
    return positive_int_error(body, ("max_completion_tokens", "max_tokens"))


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


# v1 (deployment in the body) and legacy (in the path, api-version).
route: Final = deployment_route(_LEGACY_SUFFIX, v1_needs_version=False)


# --- answering -------------------------------------------------------------------------------


async def handle(call: Call) -> int | None:
    """Validate, then answer as JSON or as an SSE stream."""
    data, fault, reply = call.data, call.fault, call.reply
    if is_embedding(call.deployment):
        return await reply.json(400, operation_not_supported("chatCompletion", call.deployment))
    error = validate_request(data, is_reasoning(call.deployment))
    if error is not None:
        return await reply.json(400, error)
    config = call.resource.config
    answer = compute_answer(data, call.deployment, config.reply)
    completion_id = "chatcmpl-" + os.urandom(15).hex()[:29]
    created = int(time.time())
    if data.get("stream") is True:
        options = data.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        frames = stream_frames(answer, completion_id, created, usage)
        return await _stream(call, answer, frames)
    payload = completion_json(answer, completion_id, created)
    if fault is not None and fault.mode == "drop":
        return await reply.drop_json(payload)
    return await reply.json(200, payload, RATELIMIT)


async def _stream(call: Call, answer: _Answer, frames: _StreamFrames) -> int | None:
    """Send an SSE stream; may be cut short by a "drop" fault or a disconnect."""
    reply, fault = call.reply, call.fault
    await reply.start_stream()
    await reply.chunk(frames.prompt_filter)
    await reply.chunk(frames.role)
    mode = fault.mode if fault is not None else None
    limit = _drop_after(fault)
    delay = call.resource.config.chunk_delay
    offset = 0
    for n, piece in enumerate(split_pieces(answer.reply, call.resource.config.chunks)):
        if n == limit:
            return 200
        if n and delay > 0 and await wait_disconnect(reply.receive, delay):
            return None
        await reply.chunk(frames.content_head + orjson.dumps(piece) + frames.content_tail)
        if mode == "annotations":
            end = offset + len(piece)
            offsets = b'{"check_offset":%d,"start_offset":%d,"end_offset":%d}' % (
                offset,
                offset,
                end,
            )
            await reply.chunk(frames.annotation_head + offsets + frames.annotation_tail)
            offset = end
    if mode == "drop":
        return 200
    await reply.chunk(frames.finish)
    if frames.usage is not None:
        await reply.chunk(frames.usage)
    await reply.chunk(_DONE, more=False)
    return 200


def _drop_after(fault: Fault | None) -> int:
    """How many content pieces a stream sends before a "drop" fault cuts it (-1: none)."""
    return fault.after_chunks if fault is not None and fault.mode == "drop" else -1


OPERATION: Final = Operation(name="ChatCompletions_Create", route=route, handle=handle)
