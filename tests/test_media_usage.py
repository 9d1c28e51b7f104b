"""Tests for app.media_usage, on answers shaped as the simulator (and Azure) writes them."""

from __future__ import annotations

import orjson
import pytest

from app.media_usage import (
    event_usage,
    image_usage,
    speech_characters,
    transcription_usage,
)
from app.simulator import images, speech, transcription


def test_gpt_image_tokens_and_image_count() -> None:
    body = images.images_json("gpt-image-1", {"quality": "low"}, "two red foxes", 3, 1)
    assert body is not None
    usage = orjson.loads(body)["usage"]
    assert image_usage(body) == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "images": 3,
    }


def test_dalle_counts_images_only() -> None:
    body = images.images_json("dall-e-3", {}, "a cat", 1, 0)
    assert body is not None
    assert image_usage(body) == {"images": 1}
    assert image_usage(b"not json") == {}
    assert image_usage(b'{"data": "x", "usage": {"input_tokens": -1}}') == {}


@pytest.mark.parametrize(
    ("fmt", "length", "expected"),
    [
        ("json", 1.5, {"audio_seconds": 2}),
        ("verbose_json", 61.2, {"audio_seconds": 62}),
        ("srt", 3725.25, {"audio_seconds": 3726}),
        ("vtt", 4.0, {"audio_seconds": 4}),
        ("text", 9.0, {}),
    ],
)
def test_whisper_seconds_from_every_format(
    fmt: str, length: float, expected: dict[str, int]
) -> None:
    usage = transcription.duration_usage(length)
    body, ctype = transcription.render(fmt, "transcribe", length, usage)
    assert transcription_usage(body, ctype.decode()) == expected


def test_verbose_json_without_usage_uses_duration() -> None:
    body = b'{"task":"transcribe","duration":7.01,"text":"hi"}'
    assert transcription_usage(body, "application/json") == {"audio_seconds": 8}


def test_transcribe_tokens_whole_and_streamed() -> None:
    usage = transcription.token_usage(2.0, "a prompt")
    body, ctype = transcription.render("json", "transcribe", 2.0, usage)
    expected = {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
    assert transcription_usage(body, ctype.decode()) == expected
    done = transcription.done_event(usage)
    assert event_usage(done[len(b"data: ") :].strip()) == expected
    assert event_usage(transcription.delta_event("The quick")[6:].strip()) == {}


def test_speech_characters_and_sse_tokens() -> None:
    assert speech_characters({"input": "héllo wörld"}) == {"characters": 11}
    assert speech_characters({"input": 5}) == {}
    usage = speech.speech_usage("hello there", "")
    done = speech.done_event(usage)[6:].strip()
    assert event_usage(done) == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
    }
    assert event_usage(b'{"type":"other.done","usage":{"input_tokens":1}}') == {}


def test_every_counter_is_a_usage_table_column() -> None:
    from app import media_usage
    from app.usage import FIELDS

    assert {media_usage.IMAGES, media_usage.AUDIO_SECONDS, media_usage.CHARACTERS} <= set(FIELDS)
