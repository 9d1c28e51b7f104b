"""Tests for the images and audio operations (app.operations.media, images, audio): the
one upstream-form decision, routes, upload parsing, and the audio event scan."""

from __future__ import annotations

import httpx
import pytest

from app.errors import BadRequest
from app.operations import Place, route
from app.operations.audio import SPEECH, TRANSCRIPTIONS, TRANSLATIONS
from app.operations.images import EDITS, GENERATIONS
from app.operations.media import AudioScan, legacy_version, media_url
from app.simulator import speech, transcription
from app.upstream import body_bytes


def place(api: str, version: str = "2024-10-21") -> Place:
    return Place("https://r.openai.azure.com", api, "dep", version, "2025-04-01-preview")


@pytest.mark.parametrize(
    ("resource", "used"),
    [
        ("2024-10-21", "2025-04-01-preview"),
        ("2025-03-01-preview", "2025-04-01-preview"),
        ("2025-04-01-preview", "2025-04-01-preview"),
        ("2025-06-01", "2025-06-01"),
    ],
)
def test_legacy_version_is_never_older_than_the_media_one(resource: str, used: str) -> None:
    assert legacy_version(resource) == used


def test_every_media_url_in_both_forms() -> None:
    suffixes = {
        GENERATIONS: "/images/generations",
        EDITS: "/images/edits",
        TRANSCRIPTIONS: "/audio/transcriptions",
        TRANSLATIONS: "/audio/translations",
        SPEECH: "/audio/speech",
    }
    for op, suffix in suffixes.items():
        assert (
            op.url(place("v1"))
            == f"https://r.openai.azure.com/openai/v1{suffix}?api-version=preview"
        )
        assert op.url(place("legacy")) == (
            f"https://r.openai.azure.com/openai/deployments/dep{suffix}?api-version=2025-04-01-preview"
        )
    assert media_url(place("legacy", "2025-05-01"), "/audio/speech").endswith("=2025-05-01")


@pytest.mark.parametrize(
    ("path", "op", "model"),
    [
        ("/v1/images/generations", GENERATIONS, None),
        ("/images/edits", EDITS, None),
        ("/openai/v1/audio/transcriptions", TRANSCRIPTIONS, None),
        ("/openai/audio/translations", TRANSLATIONS, None),
        ("/v1/audio/speech", SPEECH, None),
        ("/openai/deployments/whisper/audio/transcriptions", TRANSCRIPTIONS, "whisper"),
        ("/openai/deployments/gpt-image-1/images/edits", EDITS, "gpt-image-1"),
        ("/openai/deployments/tts/audio/speech", SPEECH, "tts"),
    ],
)
def test_routes(path: str, op: object, model: str | None) -> None:
    found = route(path)
    assert found is not None and found.op is op and found.model == model


def upload(data: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x", data=data, files=files)
    return request.read(), request.headers["content-type"]


def test_an_upload_is_parsed_once_and_names_the_deployment_for_each_candidate() -> None:
    body, ctype = upload(
        {"model": "whisper", "stream": "true"}, {"file": ("a.wav", b"RIFF", "audio/wav")}
    )
    parsed = TRANSCRIPTIONS.parse(body, None, ctype)
    assert (parsed.model, parsed.stream, parsed.content_type) == ("whisper", True, ctype)
    assert TRANSCRIPTIONS.rewrite(parsed, "whisper", False) == (body,)  # named: as received
    pieces = TRANSCRIPTIONS.rewrite(parsed, "whisper-eu", False)
    assert isinstance(pieces, tuple) and isinstance(pieces[0], memoryview)  # no copy
    other = body_bytes(pieces)
    assert b'name="model"\r\n\r\nwhisper-eu\r\n' in other and other.endswith(
        body[body.index(b"\r\n--") :]
    )
    # the Azure-shaped route names the model in its path; the form may have none
    body, ctype = upload({"prompt": "blue"}, {"image": ("a.png", b"\x89PNG", "image/png")})
    parsed = EDITS.parse(body, "gpt-image-1", ctype)
    assert parsed.model == "gpt-image-1" and not parsed.stream
    assert body_bytes(EDITS.rewrite(parsed, "gpt-image-1", False)).startswith(b"--")


@pytest.mark.parametrize(
    ("op", "data", "files", "param"),
    [
        (TRANSCRIPTIONS, {"model": "whisper"}, {"audio": ("a.wav", b"x", "audio/wav")}, "file"),
        (TRANSCRIPTIONS, {}, {"file": ("a.wav", b"x", "audio/wav")}, "model"),
        (
            EDITS,
            {"model": "gpt-image-1", "prompt": "x"},
            {"mask": ("m.png", b"x", "image/png")},
            "image",
        ),
        (EDITS, {"model": "gpt-image-1"}, {"image": ("a.png", b"x", "image/png")}, "prompt"),
    ],
)
def test_uploads_missing_what_they_need_are_400(
    op: object, data: dict[str, str], files: dict[str, tuple[str, bytes, str]], param: str
) -> None:
    body, ctype = upload(data, files)
    with pytest.raises(BadRequest) as info:
        op.parse(body, None, ctype)  # type: ignore[attr-defined]
    assert info.value.param == param


def test_speech_counts_characters_and_always_streams() -> None:
    parsed = SPEECH.parse(b'{"model":"tts","input":"h\\u00e9llo","voice":"alloy"}', None)
    assert parsed.stream and parsed.counts == {"characters": 5}
    with pytest.raises(BadRequest) as info:
        SPEECH.parse(b'{"model":"tts","voice":"alloy"}', None)
    assert info.value.param == "input"
    assert not GENERATIONS.parse(b'{"model":"m","prompt":"p","stream":true}', None).stream


def test_audio_scan_forwards_every_event_and_counts_the_last() -> None:
    usage = transcription.token_usage(2.0, "")
    events = [transcription.delta_event(p) for p in ("The quick ", "brown fox")]
    stream = b"".join(events) + transcription.done_event(usage)
    scan = AudioScan()
    out = b"".join(scan.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + scan.close()
    assert out == stream and scan.done
    assert scan.tokens() == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
    }
    tts = AudioScan()
    tts.feed(speech.delta_event(b"\x00" * 3000) + speech.done_event(speech.speech_usage("hi", "")))
    assert tts.done and tts.tokens()["prompt_tokens"] == 1
    assert b'"code":"upstream_stream_error"' in AudioScan().broken("cut")


def test_facts_read_each_answer_by_its_content_type() -> None:
    body, ctype = transcription.render("srt", "transcribe", 3.2, {})
    assert TRANSCRIPTIONS.facts(body, ctype.decode()).tokens == {"audio_seconds": 4}
    assert TRANSCRIPTIONS.facts(b"hello\n", "text/plain").tokens == {}
