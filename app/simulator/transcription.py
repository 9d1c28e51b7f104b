"""Audio transcriptions and translations (multipart uploads), v1 and legacy deployment routes.

``POST /openai/deployments/{deployment}/audio/transcriptions?api-version=X`` and
``/openai/v1/audio/transcriptions?api-version=preview`` (deployment = form ``model``);
the same for ``/audio/translations``. The form: ``file`` (required), ``model`` (v1),
``response_format``, ``stream``, ``language``, ``prompt``, ...

Every upload is heard as `TRANSCRIPT`; its length comes from its WAV header (else its
size at 128 kbit/s). Two kinds of deployment (`models.transcribes_with_tokens`):

* whisper-like: every ``response_format`` (json, text, srt, vtt, verbose_json), usage
  ``{"type": "duration", "seconds": ceil(length)}`` in json and verbose_json, ``stream``
  ignored, translations served;
* gpt-4o(-mini)-transcribe: json and text only, token usage (``audio_tokens`` =
  ceil(length x `AUDIO_TOKENS_PER_SECOND`), ``text_tokens`` = words of ``prompt``,
  ``output_tokens`` = words of the transcript), ``stream=true`` answers
  ``transcript.text.delta`` events and a ``transcript.text.done`` carrying the usage;
  no translations.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from app.simulator.asgi import RATELIMIT
from app.simulator.errors import invalid_request
from app.simulator.models import split_pieces, transcribes_with_tokens
from app.simulator.operation import Call, Operation, deployment_route, send_pieces
from app.simulator.sound import duration

TRANSCRIPT: Final = "The quick brown fox jumps over the lazy dog."
AUDIO_TOKENS_PER_SECOND: Final = 10
FORMATS: Final = frozenset({"json", "text", "srt", "vtt", "verbose_json"})
TOKEN_FORMATS: Final = frozenset({"json", "text"})
TEXT_TYPES: Final[Mapping[str, bytes]] = MappingProxyType(
    {
        "text": b"text/plain; charset=utf-8",
        "srt": b"text/plain; charset=utf-8",
        "vtt": b"text/plain; charset=utf-8",
    }
)


# --- pure helpers ----------------------------------------------------------------------------


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def token_usage(length: float, prompt: str) -> dict[str, Any]:
    """gpt-4o-transcribe usage for ``length`` seconds of audio and a ``prompt``."""
    audio = math.ceil(length * AUDIO_TOKENS_PER_SECOND)
    text = len(prompt.split())
    output = len(TRANSCRIPT.split())
    return {
        "type": "tokens",
        "input_tokens": audio + text,
        "input_token_details": {"text_tokens": text, "audio_tokens": audio},
        "output_tokens": output,
        "total_tokens": audio + text + output,
    }


def duration_usage(length: float) -> dict[str, Any]:
    """whisper usage: whole seconds of audio, at least 1."""
    return {"type": "duration", "seconds": max(1, math.ceil(length))}


def render(fmt: str, task: str, length: float, usage: dict[str, Any]) -> tuple[bytes, bytes]:
    """(body, content type) of a whole answer in ``fmt``."""
    if fmt == "text":
        return TRANSCRIPT.encode() + b"\n", TEXT_TYPES[fmt]
    if fmt == "srt":
        span = f"{_clock(0, ',')} --> {_clock(length, ',')}"
        return f"1\n{span}\n{TRANSCRIPT}\n\n".encode(), TEXT_TYPES[fmt]
    if fmt == "vtt":
        span = f"{_clock(0, '.')} --> {_clock(length, '.')}"
        return f"WEBVTT\n\n{span}\n{TRANSCRIPT}\n\n".encode(), TEXT_TYPES[fmt]
    if fmt == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": round(length, 2),
            "text": TRANSCRIPT,
            "tokens": list(range(50364, 50364 + len(TRANSCRIPT.split()))),
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 0.9,
            "no_speech_prob": 0.01,
        }
        body = {
            "task": task,
            "language": "english",
            "duration": round(length, 2),
            "text": TRANSCRIPT,
            "segments": [segment],
            "usage": usage,
        }
        return orjson.dumps(body), b"application/json"
    return orjson.dumps({"text": TRANSCRIPT, "usage": usage}), b"application/json"


def delta_event(piece: str) -> bytes:
    """One ``transcript.text.delta`` SSE event."""
    return b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": piece}) + b"\n\n"


def done_event(usage: dict[str, Any]) -> bytes:
    """The ``transcript.text.done`` SSE event that ends a stream."""
    event = {"type": "transcript.text.done", "text": TRANSCRIPT, "usage": usage}
    return b"data: " + orjson.dumps(event) + b"\n\n"


# --- answering -------------------------------------------------------------------------------


def _handler(task: str) -> Callable[[Call], Awaitable[int | None]]:
    async def handle(call: Call) -> int | None:
        reply, form = call.reply, call.form
        assert form is not None
        uploads = form.uploads("file")
        if not uploads or not uploads[0].data:
            msg = "Missing required parameter: 'file' (an audio file)."
            return await reply.json(400, invalid_request(msg, "file"))
        tokens = transcribes_with_tokens(call.deployment)
        if tokens and task == "translate":
            msg = f"The audio translation operation does not work with model {call.deployment}."
            return await reply.json(400, invalid_request(msg, "model", "OperationNotSupported"))
        fmt = form.text("response_format") or "json"
        allowed = TOKEN_FORMATS if tokens else FORMATS
        if fmt not in allowed:
            msg = f"response_format '{fmt}' is not compatible with model '{call.deployment}'."
            return await reply.json(400, invalid_request(msg, "response_format"))
        length = duration(uploads[0].data)
        usage = token_usage(length, form.text("prompt") or "") if tokens else duration_usage(length)
        if tokens and (form.text("stream") or "").lower() == "true":
            return await _stream(call, usage)
        body, content_type = render(fmt, task, length, usage)
        if call.fault is not None and call.fault.mode == "drop":
            return await reply.drop_json(body)
        if content_type == b"application/json":
            return await reply.json(200, body, RATELIMIT)
        return await reply.whole(body, content_type)

    return handle


async def _stream(call: Call, usage: dict[str, Any]) -> int | None:
    """``transcript.text.delta`` events, then ``transcript.text.done``; "drop" cuts it."""
    await call.reply.start_stream()
    pieces = split_pieces(TRANSCRIPT, call.resource.config.chunks)
    return await send_pieces(call, [delta_event(p) for p in pieces], done_event(usage))


TRANSCRIPTIONS: Final = Operation(
    name="AudioTranscriptions_Create",
    route=deployment_route("/audio/transcriptions", form_body=True),
    handle=_handler("transcribe"),
)
TRANSLATIONS: Final = Operation(
    name="AudioTranslations_Create",
    route=deployment_route("/audio/translations", form_body=True),
    handle=_handler("translate"),
)
OPERATIONS: Final = (TRANSCRIPTIONS, TRANSLATIONS)
