"""Tests for the simulator's audio operations (transcription, speech) and its sound helpers."""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

import httpx
import orjson
import pytest

from app.simulator import Fault, SimConfig, Simulator
from app.simulator.sound import RATE, duration, pcm, wav
from app.simulator.speech import seconds_for, speech_usage
from app.simulator.transcription import AUDIO_TOKENS_PER_SECOND, TRANSCRIPT
from tests.simulator.serving import serve

AUTH = {"api-key": "sim-key-1"}
V1 = "/openai/v1/audio/{}?api-version=preview"
LEGACY = "/openai/deployments/{}/audio/{}?api-version=2025-04-01-preview"
CLIP = wav(pcm(1.5))

pytestmark = pytest.mark.anyio


def events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]


async def transcribe(
    client: httpx.AsyncClient, model: str, task: str = "transcriptions", **fields: str
) -> httpx.Response:
    files = {"file": ("clip.wav", CLIP, "audio/wav")}
    return await client.post(
        V1.format(task), headers=AUTH, files=files, data={"model": model, **fields}
    )


def test_wav_is_real_and_its_duration_is_read() -> None:
    clip = wav(pcm(0.5))
    with wave.open(io.BytesIO(clip)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        assert w.getnframes() == RATE // 2
    assert duration(clip) == 0.5
    assert duration(b"\x00" * 32000) == 2.0  # not a WAV: guessed from the size


@pytest.mark.parametrize(
    ("fmt", "content_type", "expected"),
    [
        ("text", "text/plain; charset=utf-8", TRANSCRIPT + "\n"),
        ("srt", "text/plain; charset=utf-8", f"1\n00:00:00,000 --> 00:00:01,500\n{TRANSCRIPT}\n\n"),
        (
            "vtt",
            "text/plain; charset=utf-8",
            f"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n{TRANSCRIPT}\n\n",
        ),
    ],
)
async def test_whisper_text_formats(
    client: httpx.AsyncClient, fmt: str, content_type: str, expected: str
) -> None:
    r = await transcribe(client, "whisper", response_format=fmt)
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.text == expected


async def test_whisper_json_and_verbose_json_report_seconds(client: httpx.AsyncClient) -> None:
    r = await transcribe(client, "whisper")
    assert r.json() == {"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 2}}
    verbose = (await transcribe(client, "whisper", response_format="verbose_json")).json()
    assert verbose["task"] == "transcribe"
    assert verbose["duration"] == 1.5
    assert verbose["segments"][0]["text"] == TRANSCRIPT
    translated = (
        await transcribe(client, "whisper", "translations", response_format="verbose_json")
    ).json()
    assert translated["task"] == "translate"
    streamed = await transcribe(client, "whisper", stream="true")  # whisper ignores stream
    assert streamed.headers["content-type"] == "application/json"


async def test_token_model_usage_formats_and_no_translation(client: httpx.AsyncClient) -> None:
    r = await transcribe(client, "gpt-4o-transcribe", prompt="names of animals")
    audio = int(1.5 * AUDIO_TOKENS_PER_SECOND)
    assert r.json()["usage"] == {
        "type": "tokens",
        "input_tokens": audio + 3,
        "input_token_details": {"text_tokens": 3, "audio_tokens": audio},
        "output_tokens": 9,
        "total_tokens": audio + 3 + 9,
    }
    srt = await transcribe(client, "gpt-4o-transcribe", response_format="srt")
    assert srt.status_code == 400
    assert srt.json()["error"]["param"] == "response_format"
    translation = await transcribe(client, "gpt-4o-transcribe", "translations")
    assert translation.status_code == 400


async def test_token_model_streams_transcript_events(client: httpx.AsyncClient) -> None:
    r = await transcribe(client, "gpt-4o-transcribe", stream="true")
    assert r.headers["content-type"] == "text/event-stream"
    got = events(r.text)
    assert {e["type"] for e in got[:-1]} == {"transcript.text.delta"}
    assert "".join(e["delta"] for e in got[:-1]) == TRANSCRIPT
    assert got[-1]["type"] == "transcript.text.done"
    assert got[-1]["text"] == TRANSCRIPT
    assert got[-1]["usage"]["type"] == "tokens"


async def test_transcription_legacy_route_and_missing_file(
    client: httpx.AsyncClient, sim: Simulator
) -> None:
    url = LEGACY.format("whisper", "transcriptions")
    files = {"file": ("clip.wav", CLIP, "audio/wav")}
    ok = await client.post(url, headers=AUTH, files=files)
    assert ok.json()["text"] == TRANSCRIPT
    assert sim.stats.by_deployment == {"whisper": 1}
    missing = await client.post(url, headers=AUTH, files={"audio": files["file"]})
    assert missing.json()["error"]["param"] == "file"
    no_model = await client.post(V1.format("transcriptions"), headers=AUTH, files=files)
    assert no_model.status_code == 400


async def test_speech_is_a_wav_in_pieces(client: httpx.AsyncClient) -> None:
    body = {"input": "hello there world", "voice": "alloy", "response_format": "wav"}
    r = await client.post(LEGACY.format("tts", "speech"), headers=AUTH, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert "content-length" not in r.headers  # streamed as it is made
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getnframes() == int(RATE * seconds_for("hello there world"))
    mp3 = await client.post(
        V1.format("speech"), headers=AUTH, json={**body, "model": "tts", "response_format": "mp3"}
    )
    assert mp3.headers["content-type"] == "audio/mpeg"
    pcm_answer = await client.post(
        V1.format("speech"), headers=AUTH, json={**body, "model": "tts", "response_format": "pcm"}
    )
    assert len(pcm_answer.content) == 2 * int(RATE * seconds_for("hello there world"))


async def test_speech_sse_events_carry_audio_and_usage(client: httpx.AsyncClient) -> None:
    body = {
        "model": "gpt-4o-mini-tts",
        "input": "hello there world",
        "voice": "alloy",
        "response_format": "wav",
        "instructions": "cheerful",
        "stream_format": "sse",
    }
    r = await client.post(V1.format("speech"), headers=AUTH, json=body)
    assert r.headers["content-type"] == "text/event-stream"
    got = events(r.text)
    audio = b"".join(base64.b64decode(e["audio"]) for e in got[:-1])
    assert audio == wav(pcm(seconds_for("hello there world")))
    assert got[-1] == {
        "type": "speech.audio.done",
        "usage": speech_usage("hello there world", "cheerful"),
    }
    tts = await client.post(V1.format("speech"), headers=AUTH, json={**body, "model": "tts"})
    assert tts.status_code == 400
    assert tts.json()["error"]["param"] == "stream_format"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "alloy"}, "input"),
        ({"input": "x" * 4097, "voice": "alloy"}, "input"),
        ({"input": "hi"}, "voice"),
        ({"input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
    ],
)
async def test_speech_bad_requests_400(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    r = await client.post(LEGACY.format("tts", "speech"), headers=AUTH, json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_shared_faults_apply_to_audio(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault("429", retry_after_ms=1500, count=1))
    r = await transcribe(client, "whisper")
    assert r.status_code == 429
    assert r.headers["retry-after-ms"] == "1500"
    assert "AudioTranscriptions_Create" in r.json()["error"]["message"]
    sim.add_fault(Fault("500", deployment="tts", count=1))
    body = {"input": "hi", "voice": "alloy"}
    assert (
        await client.post(LEGACY.format("tts", "speech"), headers=AUTH, json=body)
    ).status_code == 500


async def test_speech_drop_cuts_the_audio_short() -> None:
    sim = Simulator(SimConfig(chunks=4))
    sim.add_fault(Fault("drop", after_chunks=2, count=1))
    body = {"input": "one two three four five", "voice": "alloy", "response_format": "wav"}
    received = b""
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                async with c.stream(
                    "POST", LEGACY.format("tts", "speech"), headers=AUTH, json=body
                ) as r:
                    async for piece in r.aiter_bytes():
                        received += piece
            whole = await c.post(LEGACY.format("tts", "speech"), headers=AUTH, json=body)
    assert 0 < len(received) < len(whole.content)
    assert whole.content.startswith(received)


async def test_hang_holds_a_transcription() -> None:
    sim = Simulator()
    sim.add_fault(Fault("hang", count=1))
    with serve(sim) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(
                    V1.format("transcriptions"),
                    headers=AUTH,
                    files={"file": ("clip.wav", CLIP, "audio/wav")},
                    data={"model": "whisper"},
                    timeout=0.5,
                )
