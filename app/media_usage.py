"""What images and audio answers count, read the way Azure reports it.

The usage table's counters (app.usage.FIELDS) for these operations:

    images generations/edits  gpt-image-*: `input_tokens` -> prompt_tokens, `output_tokens`
                              -> completion_tokens; every model: `images` = images returned
    transcriptions and        gpt-4o-transcribe: token usage as above; whisper: `audio_seconds`
    translations              from `usage.seconds`, else verbose_json's `duration`, else the
                              last cue of an srt/vtt answer (plain text tells nothing)
    speech                    `characters` of the request's `input` (Azure bills TTS by them);
                              the tokens of a `speech.audio.done` event when streamed as SSE

Seconds are whole seconds, rounded up per request. Every function here is pure and never
raises on an answer it cannot read: it counts nothing instead.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

IMAGES = "images"
AUDIO_SECONDS = "audio_seconds"
CHARACTERS = "characters"

# `00:01:02,500 --> 00:01:04,000` (srt) or `00:01:02.500 --> 00:01:04.000` (vtt; hours optional)
_CUE_END = re.compile(rb"-->\s*(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})")


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def token_counts(usage: Any) -> dict[str, int]:
    """``input_tokens``/``output_tokens`` (images, gpt-4o-transcribe, speech SSE) as the
    table's ``prompt_tokens``/``completion_tokens``."""
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for theirs, ours in (("input_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens")):
        n = _count(usage.get(theirs))
        if n is not None:
            out[ours] = n
    return out


def whole_seconds(seconds: Any) -> int | None:
    """Seconds rounded up; None for anything but a non-negative number."""
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return math.ceil(seconds)
    return None


def image_usage(body: bytes) -> dict[str, int]:
    """An images answer: its token usage (gpt-image) and how many images it holds."""
    data = _json(body)
    if data is None:
        return {}
    out = token_counts(data.get("usage"))
    images = data.get("data")
    if isinstance(images, list):
        out[IMAGES] = len(images)
    return out


def transcript_usage(usage: Any) -> dict[str, int]:
    """A transcription's ``usage`` object: tokens, or ``{"type": "duration", "seconds"}``."""
    if not isinstance(usage, dict):
        return {}
    if usage.get("type") == "duration":
        seconds = whole_seconds(usage.get("seconds"))
        return {} if seconds is None else {AUDIO_SECONDS: seconds}
    return token_counts(usage)


def transcription_usage(body: bytes, content_type: str) -> dict[str, int]:
    """A whole transcription or translation answer, in any ``response_format``."""
    if "json" in content_type:
        data = _json(body)
        if data is None:
            return {}
        counted = transcript_usage(data.get("usage"))
        if not counted:
            seconds = whole_seconds(data.get("duration"))  # verbose_json without usage
            if seconds is not None:
                counted = {AUDIO_SECONDS: seconds}
        return counted
    ends = _CUE_END.findall(body)
    if not ends:
        return {}  # plain text: nothing tells the length
    h, m, s, ms = ends[-1]
    length = int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
    return {AUDIO_SECONDS: math.ceil(length)}


def event_usage(payload: bytes) -> dict[str, int]:
    """The usage an audio stream's final event carries (``transcript.text.done``,
    ``speech.audio.done``); nothing for any other event."""
    if b'.done"' not in payload:
        return {}  # deltas: skipped without parsing
    data = _json(payload)
    if data is None or data.get("type") not in ("transcript.text.done", "speech.audio.done"):
        return {}
    return transcript_usage(data.get("usage"))


def speech_characters(data: dict[str, Any]) -> dict[str, int]:
    """The characters a speech request asks to be spoken."""
    text = data.get("input")
    return {CHARACTERS: len(text)} if isinstance(text, str) else {}
