"""Server-sent-event filtering and usage capture, on bytes.

Azure's stream has events a client should not see: a first chunk with
`"choices": []` and `prompt_filter_results`, and, in asynchronous filter
mode, annotation-only chunks without a `delta`. It may end with a usage chunk
the client did not ask for. Every other event is passed through untouched.

The per-event cost is a C-level byte scan: an event holding `"delta"` is a
normal chunk, forwarded as is (inside a JSON string the quote would be
escaped, so content cannot fake the key). Only the rare other events - the
filter chunks, the usage chunk, `[DONE]` - are parsed.
"""

from __future__ import annotations

from typing import Any

import orjson

_SEP = b"\n\n"
_DELTA = b'"delta"'
_DONE = b"data: [DONE]"


class SSEFilter:
    __slots__ = ("_buf", "done", "forward_usage", "usage")

    def __init__(self, forward_usage: bool) -> None:
        self.forward_usage = forward_usage
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._buf = b""

    def close(self) -> bytes:
        """The upstream ended: a last event without its blank line still counts."""
        rest, self._buf = self._buf.strip(), b""
        return self._event(rest) if rest else b""

    def feed(self, data: bytes) -> bytes:
        """Take a read from upstream; return the complete events to forward."""
        if self._buf:
            data = self._buf + data
        if b"\r" in data:  # after joining: a read may end between \r and \n
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(_SEP)
        if end < 0:
            self._buf = data
            return b""
        end += 2
        block, self._buf = (data, b"") if end == len(data) else (data[:end], data[end:])
        if block.count(_SEP) == 1:  # the common case: one event per read
            return block if _DELTA in block else self._event(block[:-2])
        events = block.split(_SEP)
        for event in events:
            if event and _DELTA not in event:
                return b"".join([self._event(e) for e in events if e])
        return block  # every event is a normal chunk: forward the read as is

    def _event(self, event: bytes) -> bytes:
        if _DELTA in event:
            return event + _SEP
        if event.startswith(_DONE):
            self.done = True
            return event + _SEP
        payload = _data_of(event)
        if payload is None:
            return event + _SEP  # a comment or other field: harmless, keep it
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event + _SEP
        if not isinstance(chunk, dict):
            return event + _SEP
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            return event + _SEP if self.forward_usage else b""
        if "error" in chunk:
            return event + _SEP
        # prompt-filter-only first chunk (choices: []) or an annotation-only chunk
        return b""


def _data_of(event: bytes) -> bytes | None:
    lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def error_event(message: str, code: str = "upstream_stream_error") -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + _SEP


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The `usage` object of a non-streamed completion, if any."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


def token_counts(usage: dict[str, Any]) -> dict[str, int]:
    """prompt/completion (+ cached/reasoning when reported) as ints."""
    prompt_details = usage.get("prompt_tokens_details")
    done_details = usage.get("completion_tokens_details")
    found = {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cached_tokens": (
            prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
        ),
        "reasoning_tokens": (
            done_details.get("reasoning_tokens") if isinstance(done_details, dict) else None
        ),
    }
    return {
        name: value
        for name, value in found.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    }
