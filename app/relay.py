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
        return rest + _SEP if rest and self._keep(rest) else b""

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
        # Walk the events; runs of kept events are forwarded as slices of the
        # read, so a normal chunk costs two byte scans and no copy.
        out: list[bytes] = []
        kept_from = pos = 0
        size = len(block)
        while pos < size:
            stop = block.find(_SEP, pos)
            nxt = stop + 2
            if stop > pos and block.find(_DELTA, pos, stop) < 0 and not self._keep(block[pos:stop]):
                if pos > kept_from:
                    out.append(block[kept_from:pos])
                kept_from = nxt
            pos = nxt
        if kept_from == 0:
            return block
        out.append(block[kept_from:])
        return b"".join(out)

    def _keep(self, event: bytes) -> bool:
        """An event without a delta: note [DONE] and usage; drop filter chunks."""
        if event.startswith(_DONE):
            self.done = True
            return True
        payload = _data_of(event)
        if payload is None:
            return True  # a comment or other field: harmless, keep it
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(chunk, dict):
            return True
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            return self.forward_usage
        if "error" in chunk:
            return True
        # prompt-filter-only first chunk (choices: []) or an annotation-only chunk
        return _DELTA in event


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
