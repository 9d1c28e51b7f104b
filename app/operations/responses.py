"""The Responses API: `POST .../responses` and the stored-response routes.

Upstream: `{endpoint}/openai/v1/responses` on a v1 resource, or
`/openai/responses?api-version={responses_api_version}` on a legacy one (Azure
serves Responses only from 2025-03-01-preview); the deployment is in `model`
either way. Stored responses are addressed as `/responses/{id}`, `/input_items`
and `/cancel` under the same base.

Parameter hygiene, in the Responses vocabulary: reasoning deployments lose
`temperature`/`top_p`; other deployments lose `reasoning` and the
`reasoning.encrypted_content` include, so Codex and the agents SDK work against
a gpt-4o deployment too.

A stream is relayed as the bytes that arrive; `EventScan` reads only the
`response.created` id and the terminal event's usage, in one pass over the
bytes (each byte is looked at a bounded number of times, however the reads
split the events).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from app.operations.base import (
    JSON,
    Answer,
    Facts,
    Operation,
    Parsed,
    Place,
    answer_model,
    body_json,
    counts,
    detail,
)
from app.relay import MAX_EVENT
from app.upstream import StreamBroken

SAMPLING = ("temperature", "top_p")  # rejected by reasoning deployments
ENCRYPTED_REASONING = "reasoning.encrypted_content"
TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed", b"error"})
CREATED = b"response.created"

# A response id goes into an upstream URL path: one plain segment.
RESPONSE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")
STORED_PREFIXES = ("/v1/responses/", "/openai/v1/responses/", "/openai/responses/", "/responses/")
# (tail, method) -> allowed
STORED_METHODS = {
    "": ("GET", "DELETE"),
    "/input_items": ("GET",),
    "/cancel": ("POST",),
}


def usage_counts(usage: dict[str, Any]) -> dict[str, int]:
    """Responses usage in the usage table's fields (input -> prompt, output -> completion)."""
    return counts(
        {
            "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "cached_tokens": detail(usage, "input_tokens_details", "cached_tokens"),
            "reasoning_tokens": detail(usage, "output_tokens_details", "reasoning_tokens"),
        }
    )


def rewrite_body(body: dict[str, Any], *, deployment: str, reasoning: bool) -> bytes:
    out = dict(body)
    out["model"] = deployment
    if reasoning:
        for name in SAMPLING:
            out.pop(name, None)
    else:
        out.pop("reasoning", None)
        include = out.get("include")
        if isinstance(include, list) and ENCRYPTED_REASONING in include:
            kept = [i for i in include if i != ENCRYPTED_REASONING]
            if kept:
                out["include"] = kept
            else:
                del out["include"]
    return orjson.dumps(out)


def stored_route(path: str) -> tuple[str, str] | None:
    """(response id, tail) of `/.../responses/{id}[/input_items|/cancel]`, else None."""
    for prefix in STORED_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            rid, _, tail = rest.partition("/")
            tail = "/" + tail if tail else ""
            if tail in STORED_METHODS and RESPONSE_ID.match(rid):
                return rid, tail
            return None
    return None


def stored_url(place: Place, response_id: str, tail: str, query: str) -> str:
    """A stored response's URL; the caller's query is kept but for `api-version`."""
    kept = "&".join(p for p in query.split("&") if p and not p.lower().startswith("api-version="))
    if place.api == "v1":
        url = f"{place.base}/openai/v1/responses/{response_id}{tail}"
        return f"{url}?{kept}" if kept else url
    url = (
        f"{place.base}/openai/responses/{response_id}{tail}"
        f"?api-version={place.responses_api_version}"
    )
    return f"{url}&{kept}" if kept else url


def failure_events(message: str, response_id: str | None, sequence: int) -> bytes:
    """What a stream cut short ends with: an `error` event (openai-python raises on its
    `error` object) and, when the response is known, `response.failed` carrying its id
    (what Codex and the Responses stream helpers treat as the failed end)."""
    error = {"type": "server_error", "code": "upstream_stream_error", "message": message}
    out = [
        b"event: error\ndata: "
        + orjson.dumps(
            {
                "type": "error",
                "sequence_number": sequence,
                "code": "upstream_stream_error",
                "message": message,
                "param": None,
                "error": {**error, "param": None},
            }
        )
        + b"\n\n"
    ]
    if response_id is not None:
        failed = {
            "type": "response.failed",
            "sequence_number": sequence + 1,
            "response": {
                "id": response_id,
                "object": "response",
                "status": "failed",
                "error": {"code": "server_error", "message": message},
                "output": [],
                "usage": None,
            },
        }
        out.append(b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n")
    return b"".join(out)


class EventScan:
    """Relays a Responses event stream and reads what the gateway needs.

    Events are split at blank lines as the reads arrive and forwarded whole (so
    redaction sees whole events), otherwise untouched but for `\r\n` -> `\n`. An
    event's type is read from its first bytes (`event: <type>`, else the `"type"`
    that leads its JSON); only `response.created` (until the id is known) and
    terminal events are parsed. Each read is scanned once and a held partial event
    is joined once, when it completes: the cost is linear in the bytes.
    """

    __slots__ = (
        "_head",
        "_held",
        "_keep",
        "_parts",
        "_size",
        "done",
        "events",
        "model",
        "response_id",
        "usage",
    )

    HEAD = 96  # bytes enough to read an event's type

    def __init__(self) -> None:
        self.done = False
        self.response_id: str | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.events = 0  # complete events seen: the next sequence number
        self._parts: list[bytes] = []  # the current event, while it may matter
        self._head = 0  # bytes in _parts
        self._keep: bool | None = None  # None: type not read yet
        self._held: list[bytes] = []  # bytes after the last blank line, not yet forwarded
        self._size = 0  # bytes in _held

    def feed(self, data: bytes) -> bytes:
        text = data.replace(b"\r", b"") if b"\r" in data else data
        pos = 0
        last = -1  # end of the last complete event in `text`
        if self._held and text[:1] == b"\n" and self._held[-1][-1:] == b"\n":
            self._end()  # the blank line straddles two reads
            pos = last = 1
        size = len(text)
        while pos < size:
            stop = text.find(b"\n\n", pos)
            if stop < 0:
                self._part(text[pos:])
                break
            self._part(text[pos:stop])
            self._end()
            pos = last = stop + 2
        if last < 0:
            self._hold(text)
            return b""
        out = text if last == size else text[:last]
        if self._held:
            self._held.append(out)
            out = b"".join(self._held)
            self._held, self._size = [], 0
        if last < size:
            self._hold(text[last:])
        return out

    def close(self) -> bytes:
        """The upstream ended: a last event without its blank line still counts."""
        if self._parts:
            self._end()
        rest = b"".join(self._held).strip(b"\n")
        self._held, self._size = [], 0
        return rest + b"\n\n" if rest else b""

    def tokens(self) -> dict[str, int]:
        return usage_counts(self.usage) if self.usage is not None else {}

    def relayed(self) -> int:
        return self.events  # deltas, mostly; a few lifecycle events besides

    def broken(self, message: str) -> bytes:
        return failure_events(message, self.response_id, self.events)

    def _hold(self, piece: bytes) -> None:
        self._held.append(piece)
        self._size += len(piece)
        if self._size > MAX_EVENT:  # as for chat: no event grows without bound
            self._held, self._size, self._parts, self._keep = [], 0, [], False
            raise StreamBroken(f"an event of the stream is larger than {MAX_EVENT} bytes")

    def _part(self, piece: bytes) -> None:
        if not piece or self._keep is False:
            return
        self._parts.append(piece)
        self._head += len(piece)
        if self._keep is None and self._head >= self.HEAD:
            self._keep = self._wanted(b"".join(self._parts)[: self.HEAD])
            if not self._keep:
                self._parts.clear()

    def _end(self) -> None:
        self.events += 1
        parts, keep = self._parts, self._keep
        self._parts, self._head, self._keep = [], 0, None
        if not parts or keep is False:
            return
        event = b"".join(parts)
        if keep is None and not self._wanted(event[: self.HEAD]):
            return
        self._read(event)

    def _wanted(self, head: bytes) -> bool:
        kind = event_type(head)
        if kind is None:
            return False
        return kind in TERMINAL or (kind == CREATED and self.response_id is None)

    def _read(self, event: bytes) -> None:
        payload = b"\n".join(
            ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")
        )
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        response = data.get("response")
        if isinstance(response, dict):
            rid = response.get("id")
            if self.response_id is None and isinstance(rid, str):
                self.response_id = rid
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
            self.model = answer_model(response) or self.model
        if kind != "response.created" and kind is not None:
            self.done = True


def event_type(head: bytes) -> bytes | None:
    """The type of an event from its first bytes, or None if they do not say."""
    if head.startswith(b"event:"):
        line = head[6:].split(b"\n", 1)[0]
        return line.strip()
    at = head.find(b'"type":')
    if at < 0:
        return None
    start = head.find(b'"', at + 7)
    end = head.find(b'"', start + 1)
    return head[start + 1 : end] if start >= 0 and end > start else None


class Responses(Operation):
    name = "responses"
    paths = frozenset({"/v1/responses", "/responses", "/openai/v1/responses", "/openai/responses"})
    suffix = "/responses"
    answer = Answer.JSON

    def url(self, place: Place) -> str:
        if place.api == "v1":
            return f"{place.base}/openai/v1/responses"
        return f"{place.base}/openai/responses?api-version={place.responses_api_version}"

    def rewrite(self, parsed: Parsed, deployment: str, reasoning: bool) -> bytes:
        return rewrite_body(parsed.data, deployment=deployment, reasoning=reasoning)

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        data = body_json(body)
        if data is None:
            return Facts()
        usage = data.get("usage")
        rid = data.get("id")
        return Facts(
            usage_counts(usage) if isinstance(usage, dict) else {},
            rid if isinstance(rid, str) else None,
            answer_model(data),
        )

    def scan(self, parsed: Parsed | None) -> EventScan:
        return EventScan()

    def stored_id(self, parsed: Parsed) -> str | None:
        rid = parsed.data.get("previous_response_id")
        return rid if isinstance(rid, str) and rid else None

    def stores(self, parsed: Parsed) -> bool:
        return parsed.data.get("store") is not False


RESPONSES = Responses()
