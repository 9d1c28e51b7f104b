"""Text to speech: ``POST /openai/deployments/{deployment}/audio/speech?api-version=X`` and
``/openai/v1/audio/speech?api-version=preview`` (deployment = body ``model``).

The body: ``input`` (required, at most `MAX_INPUT` characters), ``voice`` (required),
``response_format`` (mp3 by default), ``speed``, ``instructions``, ``stream_format``.

The answer is a real tone, `seconds_for` the input, sent in ``SimConfig.chunks`` pieces
as they are "made" (``chunk_delay`` apart, no content-length): a WAV file for ``wav``, raw
16-bit samples for ``pcm``, and the same WAV bytes under the asked format's content type
otherwise (the simulator encodes no mp3). ``stream_format: sse`` (gpt-4o-mini-tts only)
sends ``speech.audio.delta`` events with base64 pieces and a ``speech.audio.done`` event
with token usage: ``input_tokens`` = words of input and instructions (>= 1),
``output_tokens`` = ceil(seconds x `AUDIO_TOKENS_PER_SECOND`).
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from app.simulator.errors import invalid_request
from app.simulator.models import speaks_sse
from app.simulator.operation import Call, Operation, deployment_route, send_pieces
from app.simulator.sound import pcm, wav

MAX_INPUT: Final = 4096
AUDIO_TOKENS_PER_SECOND: Final = 20
CONTENT_TYPES: Final[Mapping[str, bytes]] = MappingProxyType(
    {
        "mp3": b"audio/mpeg",
        "opus": b"audio/opus",
        "aac": b"audio/aac",
        "flac": b"audio/flac",
        "wav": b"audio/wav",
        "pcm": b"audio/pcm",
    }
)


# --- pure helpers ----------------------------------------------------------------------------


def seconds_for(text: str) -> float:
    """How long the spoken ``text`` lasts: 0.1 s + 0.05 s a word, at most 2 s."""
    return min(2.0, 0.1 + 0.05 * len(text.split()))


def audio_bytes(text: str, fmt: str) -> bytes:
    """The spoken answer in ``fmt``: raw samples for pcm, a WAV file otherwise."""
    samples = pcm(seconds_for(text))
    return samples if fmt == "pcm" else wav(samples)


def speech_usage(text: str, instructions: str) -> dict[str, int]:
    """Token usage of a ``speech.audio.done`` event."""
    words = max(1, len(text.split()) + len(instructions.split()))
    output = math.ceil(seconds_for(text) * AUDIO_TOKENS_PER_SECOND)
    return {"input_tokens": words, "output_tokens": output, "total_tokens": words + output}


def pieces(data: bytes, n: int) -> list[bytes]:
    """``data`` cut into at most ``n`` non-empty pieces of near-equal size."""
    size = len(data)
    bounds = [i * size // n for i in range(n + 1)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def validate(data: Mapping[str, Any], deployment: str) -> bytes | None:
    """A 400 body for a request the deployment would refuse, else None."""
    text = data.get("input")
    if not isinstance(text, str) or not text:
        return invalid_request("Missing required parameter: 'input'.", "input")
    if len(text) > MAX_INPUT:
        msg = f"Invalid 'input': string too long. Expected at most {MAX_INPUT} characters."
        return invalid_request(msg, "input", "string_above_max_length")
    if not isinstance(data.get("voice"), str) or not data["voice"]:
        return invalid_request("Missing required parameter: 'voice'.", "voice")
    fmt = data.get("response_format", "mp3")
    if fmt not in CONTENT_TYPES:
        return invalid_request(f"Invalid 'response_format': {fmt!r}.", "response_format")
    stream_format = data.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        return invalid_request(f"Invalid 'stream_format': {stream_format!r}.", "stream_format")
    if stream_format == "sse" and not speaks_sse(deployment):
        msg = f"stream_format 'sse' is not supported for model '{deployment}'."
        return invalid_request(msg, "stream_format", "unsupported_value")
    return None


def delta_event(piece: bytes) -> bytes:
    """One ``speech.audio.delta`` SSE event."""
    event = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def done_event(usage: dict[str, int]) -> bytes:
    """The ``speech.audio.done`` SSE event that ends a stream."""
    return b"data: " + orjson.dumps({"type": "speech.audio.done", "usage": usage}) + b"\n\n"


# --- answering -------------------------------------------------------------------------------


async def handle(call: Call) -> int | None:
    """Validate, then send the audio as it is made (bytes, or SSE events)."""
    data, reply = call.data, call.reply
    error = validate(data, call.deployment)
    if error is not None:
        return await reply.json(400, error)
    text: str = data["input"]
    fmt: str = data.get("response_format", "mp3")
    sse = data.get("stream_format") == "sse"
    frames = pieces(audio_bytes(text, fmt), call.resource.config.chunks)
    await reply.start_stream(b"text/event-stream" if sse else CONTENT_TYPES[fmt])
    if not sse:
        return await send_pieces(call, frames, b"")
    instructions = data.get("instructions")
    usage = speech_usage(text, instructions if isinstance(instructions, str) else "")
    return await send_pieces(call, [delta_event(f) for f in frames], done_event(usage))


OPERATION: Final = Operation(
    name="AudioSpeech_Create", route=deployment_route("/audio/speech"), handle=handle
)
