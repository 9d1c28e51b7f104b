"""The Responses API's wire format: request checks, the ``response`` object, its events.

Pure functions only; ``responses.py`` serves them. Token accounting (deterministic):

* input items: ``input`` as a string is one user message; in a list, every item with a
  ``role`` is a message whose text is its ``content`` string or the ``text`` of its
  ``input_text``/``output_text``/``text`` parts joined by spaces; other items carry no text;
* ``input_tokens`` = sum over messages (and ``instructions``) of (words + 3), at least 1,
  plus the context of ``previous_response_id``: that response's input + output tokens,
  which are also reported as ``input_tokens_details.cached_tokens``;
* reply = ``SimConfig.reply`` if set, else ``"You said: " + <last user message text>`` cut
  to 200 characters; ``max_output_tokens`` caps it to that many words (status
  ``incomplete``, reason ``max_output_tokens``);
* ``output_tokens`` = words in the reply, plus ``REASONING_TOKENS`` on reasoning
  deployments (reported as ``output_tokens_details.reasoning_tokens``);
* ``total_tokens`` = ``input_tokens + output_tokens``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from app.simulator.errors import invalid_request
from app.simulator.models import MAX_REPLY_CHARS, REASONING_TOKENS, cap_reply, content_text

MIN_API_VERSION: Final = "2025-03-01"
MIN_OUTPUT_TOKENS: Final = 16
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text"})
_UNSUPPORTED_FOR_REASONING: Final = ("temperature", "top_p")
_ENCRYPTED: Final = "reasoning.encrypted_content"
_DATE: Final = re.compile(r"(\d{4}-\d{2}-\d{2})")
_MOVED_MESSAGES: Final = (
    "Unsupported parameter: 'messages'. In the Responses API, this parameter has moved to"
    " 'input'. Try again with the new parameter. See the API documentation for more"
    " information: https://platform.openai.com/docs/api-reference/responses/create."
)


@dataclass(frozen=True, slots=True)
class Turn:
    """A computed answer to one Responses request."""

    reply: str
    incomplete: bool
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    model: str
    reasoning: bool
    encrypted: bool


def new_id(prefix: str) -> str:
    """An Azure-looking object id: ``resp_``/``msg_``/``rs_`` and 50 hex digits."""
    return f"{prefix}_{os.urandom(25).hex()}"


def api_version_too_old(version: bytes) -> bool:
    """Whether a legacy ``api-version`` predates Responses (2025-03-01-preview)."""
    match = _DATE.match(version.decode("latin-1"))
    return match is not None and match.group(1) < MIN_API_VERSION


def item_text(item: Mapping[str, Any]) -> str:
    """Text of a message item: its content string, or its text parts joined by spaces."""
    return content_text(item.get("content"), _TEXT_PARTS)


def input_items(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as stored items (ids added, string content as parts)."""
    raw = data.get("input")
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    items: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else []:
        stored = dict(item)
        if "role" in stored:
            stored.setdefault("type", "message")
            stored.setdefault("status", "completed")
            if isinstance(stored.get("content"), str):
                kind = "output_text" if stored["role"] == "assistant" else "input_text"
                stored["content"] = [{"type": kind, "text": stored["content"]}]
        stored.setdefault("id", new_id("msg" if stored.get("type") == "message" else "item"))
        items.append(stored)
    return items


def count_input_tokens(items: Iterable[Mapping[str, Any]], instructions: Any) -> int:
    """Words + 3 per message (and for ``instructions``), at least 1."""
    total = sum(len(item_text(i).split()) + 3 for i in items if "role" in i)
    if isinstance(instructions, str) and instructions:
        total += len(instructions.split()) + 3
    return max(1, total)


def default_reply(items: list[dict[str, Any]]) -> str:
    """``"You said: <last user text>"`` cut to 200 characters."""
    last = next((i for i in reversed(items) if i.get("role") == "user"), None)
    return ("You said: " + (item_text(last) if last is not None else ""))[:MAX_REPLY_CHARS]


def validate(data: Mapping[str, Any], reasoning: bool) -> bytes | None:
    """A 400 error body if the create request is invalid, else None."""
    if "messages" in data:
        return invalid_request(_MOVED_MESSAGES, None, "unsupported_parameter")
    raw = data.get("input")
    if raw is None and not data.get("previous_response_id"):
        return invalid_request("Missing required parameter: 'input'.", "input")
    if raw is not None and not isinstance(raw, str | list):
        return invalid_request(
            "Invalid type for 'input': expected a string or an array.", "input", "invalid_type"
        )
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, dict):
            return invalid_request(
                f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]", "invalid_type"
            )
    prev = data.get("previous_response_id")
    if prev is not None and not isinstance(prev, str):
        return invalid_request(
            "Invalid type for 'previous_response_id': expected a string.",
            "previous_response_id",
            "invalid_type",
        )
    error = _reasoning_error(data, reasoning)
    if error is not None:
        return error
    limit = data.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool):
            return invalid_request(
                "Invalid type for 'max_output_tokens': expected an integer.",
                "max_output_tokens",
                "invalid_type",
            )
        if limit < MIN_OUTPUT_TOKENS:
            return invalid_request(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{MIN_OUTPUT_TOKENS}, but got {limit} instead.",
                "max_output_tokens",
                "integer_below_min_value",
            )
    return None


def _reasoning_error(data: Mapping[str, Any], reasoning: bool) -> bytes | None:
    """Parameters a reasoning model refuses, or reasoning-only ones other models refuse."""
    if reasoning:
        for name in _UNSUPPORTED_FOR_REASONING:
            if data.get(name) is not None:
                return invalid_request(
                    f"Unsupported parameter: '{name}' is not supported with this model.",
                    name,
                    "unsupported_parameter",
                )
        return None
    config = data.get("reasoning")
    for name, value in config.items() if isinstance(config, dict) else ():
        if value is not None:
            return invalid_request(
                f"Unsupported parameter: 'reasoning.{name}' is not supported with this model.",
                f"reasoning.{name}",
                "unsupported_parameter",
            )
    include = data.get("include")
    if isinstance(include, list) and _ENCRYPTED in include:
        return invalid_request(
            "Encrypted content is not supported with this model.",
            "include",
            "unsupported_parameter",
        )
    return None


def previous_not_found(response_id: str) -> bytes:
    """The 400 body for a ``previous_response_id`` this resource does not hold."""
    return invalid_request(
        f"Previous response with id '{response_id}' not found.",
        "previous_response_id",
        "previous_response_not_found",
    )


def not_found(response_id: str) -> bytes:
    """The 404 body for a response id this resource does not hold."""
    return invalid_request(f"Response with id '{response_id}' not found.")


def compute_turn(
    data: Mapping[str, Any],
    items: list[dict[str, Any]],
    model: str,
    reasoning: bool,
    fixed_reply: str | None,
    context_tokens: int,
) -> Turn:
    """The deterministic answer for a validated request."""
    base = fixed_reply if fixed_reply is not None else default_reply(items)
    reply, finish = cap_reply(base, data.get("max_output_tokens"))
    reasoning_tokens = REASONING_TOKENS if reasoning else 0
    include = data.get("include")
    return Turn(
        reply=reply,
        incomplete=finish == "length",
        input_tokens=count_input_tokens(items, data.get("instructions")) + context_tokens,
        cached_tokens=context_tokens,
        output_tokens=len(reply.split()) + reasoning_tokens,
        reasoning_tokens=reasoning_tokens,
        model=model,
        reasoning=reasoning,
        encrypted=reasoning and isinstance(include, list) and _ENCRYPTED in include,
    )


def usage(turn: Turn) -> dict[str, Any]:
    """The ``usage`` object."""
    return {
        "input_tokens": turn.input_tokens,
        "input_tokens_details": {"cached_tokens": turn.cached_tokens},
        "output_tokens": turn.output_tokens,
        "output_tokens_details": {"reasoning_tokens": turn.reasoning_tokens},
        "total_tokens": turn.input_tokens + turn.output_tokens,
    }


def reasoning_item(item_id: str, turn: Turn) -> dict[str, Any]:
    """The reasoning output item of a reasoning deployment (no summary asked)."""
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    if turn.encrypted:
        digest = hashlib.sha256(item_id.encode()).digest()
        item["encrypted_content"] = "gAAAAA" + base64.urlsafe_b64encode(digest * 3).decode()
    return item


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The assistant message output item (``text=None``: no content yet)."""
    content = [] if text is None else [text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def text_part(text: str) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def response_body(
    data: Mapping[str, Any], response_id: str, created_at: int, turn: Turn
) -> dict[str, Any]:
    """A ``response`` object with no output yet (status ``in_progress``)."""
    reasoning = data.get("reasoning")
    if not isinstance(reasoning, dict):
        reasoning = {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": data.get("background") is True,
        "error": None,
        "incomplete_details": None,
        "instructions": data.get("instructions"),
        "max_output_tokens": data.get("max_output_tokens"),
        "model": turn.model,
        "output": [],
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "previous_response_id": data.get("previous_response_id"),
        "reasoning": {
            "effort": reasoning.get("effort", "medium" if turn.reasoning else None),
            "summary": reasoning.get("summary"),
        },
        "service_tier": "default",
        "store": data.get("store", True) is not False,
        "temperature": data.get("temperature", 1.0),
        "text": data.get("text") or {"format": {"type": "text"}},
        "tool_choice": data.get("tool_choice", "auto"),
        "tools": data.get("tools") or [],
        "top_p": data.get("top_p", 1.0),
        "truncation": data.get("truncation", "disabled"),
        "usage": None,
        "user": data.get("user"),
        "metadata": data.get("metadata") or {},
    }


def final_body(start: dict[str, Any], turn: Turn, output: list[dict[str, Any]]) -> dict[str, Any]:
    """The finished ``response`` object: status, output, usage."""
    body = dict(start)
    body["status"] = "incomplete" if turn.incomplete else "completed"
    if turn.incomplete:
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    body["output"] = output
    body["usage"] = usage(turn)
    return body


def event_plan(
    start: dict[str, Any], turn: Turn, pieces: list[str], queued: bool
) -> list[dict[str, Any]]:
    """Every event of a streamed response, in order, without ``sequence_number``."""
    events: list[dict[str, Any]] = []
    first = dict(start, status="queued") if queued else start
    events.append({"type": "response.created", "response": first})
    if queued:
        events.append({"type": "response.queued", "response": first})
    events.append({"type": "response.in_progress", "response": start})
    output: list[dict[str, Any]] = []
    if turn.reasoning:
        item = reasoning_item(new_id("rs"), turn)
        added = {k: v for k, v in item.items() if k != "encrypted_content"}
        events.append({"type": "response.output_item.added", "output_index": 0, "item": added})
        events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
        output.append(item)
    index = len(output)
    msg_id = new_id("msg")
    where = {"item_id": msg_id, "output_index": index, "content_index": 0}
    events.append(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": message_item(msg_id, None, "in_progress"),
        }
    )
    events.append({"type": "response.content_part.added", **where, "part": text_part("")})
    for piece in pieces:
        events.append(
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        )
    events.append(
        {"type": "response.output_text.done", **where, "text": turn.reply, "logprobs": []}
    )
    events.append({"type": "response.content_part.done", **where, "part": text_part(turn.reply)})
    message = message_item(msg_id, turn.reply, "incomplete" if turn.incomplete else "completed")
    events.append({"type": "response.output_item.done", "output_index": index, "item": message})
    output.append(message)
    final = final_body(start, turn, output)
    kind = "response.incomplete" if turn.incomplete else "response.completed"
    events.append({"type": kind, "response": final})
    return events


def frame(event: Mapping[str, Any], sequence_number: int) -> bytes:
    """One SSE event as OpenAI sends it: an ``event:`` line and a ``data:`` line."""
    payload = {"type": event["type"], "sequence_number": sequence_number, **event}
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(payload))
