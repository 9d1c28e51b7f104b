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

from app.upstream import StreamBroken

_SEP = b"\n\n"
_DELTA = b'"delta"'
_DONE = b"data: [DONE]"
# The largest single event relayed: an event (or a line without its end) that
# grows past this ends the stream as broken instead of growing without bound.
# Generous, for events that carry a whole answer or an image.
MAX_EVENT = 16 * 1024 * 1024
_SMALL = 64 * 1024  # usage and filter-only chunks are far smaller than this


class SSEFilter:
    """Cost is linear in the bytes received: a read is scanned once for a blank
    line and held as a piece while an event is incomplete; the pieces are joined
    once, when the event completes (issue 10: one 50 MB line re-joined and
    re-scanned on every read cost seconds of CPU)."""

    __slots__ = (
        "_cr",
        "_held",
        "_parts",
        "deltas",
        "done",
        "forward_usage",
        "max_event",
        "model",
        "usage",
    )

    def __init__(self, forward_usage: bool, max_event: int = MAX_EVENT) -> None:
        self.forward_usage = forward_usage
        self.max_event = max_event
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None  # the model Azure says answered (from the usage chunk)
        self.done = False
        self.deltas = 0  # content chunks forwarded: about one token each
        self._parts: list[bytes] = []  # an incomplete event, as it arrived
        self._held = 0  # bytes in _parts
        self._cr = False  # the last read ended with \r (perhaps half of \r\n)

    def close(self) -> bytes:
        """The upstream ended: a last event without its blank line still counts."""
        rest = b"".join(self._parts).strip()
        self._parts, self._held = [], 0
        return rest + _SEP if rest and self._keep(rest) else b""

    def feed(self, data: bytes) -> bytes:
        """Take a read from upstream; return the complete events to forward."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if b"\r" in data:  # normalized per read; a trailing \r waits for its \n
            if data.endswith(b"\r"):
                data = data[:-1]
                self._cr = True
            data = data.replace(b"\r\n", b"\n")
        if not data:
            return b""
        parts = self._parts
        if parts:
            # an event is pending: does this read complete it (the blank line
            # may straddle the two)?
            if data.find(_SEP) < 0 and not (data[:1] == b"\n" and parts[-1][-1:] == b"\n"):
                self._hold(data)
                return b""
            parts.append(data)
            data = b"".join(parts)
            self._parts, self._held = [], 0
        end = data.rfind(_SEP)
        if end < 0:
            self._hold(data)
            return b""
        end += 2
        if end == len(data):
            block = data
        else:
            block = data[:end]
            self._hold(data[end:])
        # Walk the events; runs of kept events are forwarded as slices of the
        # read, so a normal chunk costs two byte scans and no copy.
        out: list[bytes] = []
        kept_from = pos = 0
        size = len(block)
        deltas = 0
        while pos < size:
            stop = block.find(_SEP, pos)
            nxt = stop + 2
            if stop > pos:
                if block.find(_DELTA, pos, stop) >= 0:
                    deltas += 1
                elif not self._keep(block[pos:stop]):
                    if pos > kept_from:
                        out.append(block[kept_from:pos])
                    kept_from = nxt
            pos = nxt
        self.deltas += deltas
        if kept_from == 0:
            return block
        out.append(block[kept_from:])
        return b"".join(out)

    def _hold(self, piece: bytes) -> None:
        self._parts.append(piece)
        self._held += len(piece)
        if self._held > self.max_event:
            self._parts, self._held = [], 0
            raise StreamBroken(f"an event of the stream is larger than {self.max_event} bytes")

    def _keep(self, event: bytes) -> bool:
        """An event without a delta: note [DONE] and usage; drop filter chunks."""
        if event.startswith(_DONE):
            self.done = True
            return True
        if len(event) > _SMALL:
            return True  # not a usage or filter chunk (those are small): keep, unparsed
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
            model = chunk.get("model")
            if isinstance(model, str) and model:
                self.model = model
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


def usage_of(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The `usage` object of a non-streamed answer, if any, and the `model` that answered."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    usage = parsed.get("usage")
    model = parsed.get("model")
    return (
        usage if isinstance(usage, dict) else None,
        model if isinstance(model, str) and model else None,
    )


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
