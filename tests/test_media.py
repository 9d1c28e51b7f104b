"""Images and audio through the real gateway, with openai-python (and Open WebUI's own
requests) against the simulated regions: generations, edits with real uploads,
transcriptions in every format and streamed, speech streamed to a file, failover from a
throttled region, allowlists, limits, usage and metrics.

Which region served is read from the simulators' recorded requests, never from the
gateway. One gateway serves the whole module.
"""

from __future__ import annotations

import base64
import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.simulator.images import OUTPUT_TOKENS, png, prompt_colour
from app.simulator.sound import RATE, pcm, wav
from app.simulator.speech import seconds_for
from app.simulator.transcription import TRANSCRIPT
from tests.conftest import GATEWAY_KEY, SIM_KEYS, Gateway, Sim, launch_gateway, start_sim, stop

ADMIN = "test-admin-key-root"
NARROW = "test-key-chat-only"
SLOW = "test-key-one-per-minute"
MAX_BODY = 2 * 1024 * 1024
CLIP = wav(pcm(1.5))  # a real 1.5 s WAV


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Sim]:
    """A region that speaks slowly: audio in 4 pieces, 0.3 s apart."""
    s = start_sim("slowtts", "--chunks", "4", "--chunk-delay", "0.3")
    yield s
    stop(s.proc)


@pytest.fixture(scope="module")
def gw(
    sims: dict[str, Sim], slow_sim: Sim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    both = {"sweden": 0, "eastus": 1}  # sweden (legacy) first, eastus (v1) when it fails
    models: dict[str, Any] = {
        name: [
            {"resource": region, "deployment": name, "priority": p} for region, p in both.items()
        ]
        for name in ("gpt-image-1", "whisper", "tts")
    }
    # a public name that is not the deployment's: every upload is re-sent with another model
    models["speech-to-text"] = [
        {"resource": region, "deployment": "whisper", "priority": p} for region, p in both.items()
    ]
    models.update(
        {
            "dall-e-3": ["eastus/dall-e-3"],
            "gpt-4o-transcribe": ["eastus/gpt-4o-transcribe"],
            "gpt-4o-mini-tts": ["eastus/gpt-4o-mini-tts"],
            "slow-tts": ["slowtts/tts"],
            "gpt-4o": ["eastus/gpt-4o"],
        }
    )
    config = {
        "gateway": {
            "keys": [
                {"name": "alice", "key": GATEWAY_KEY},
                {"name": "root", "key": ADMIN, "admin": True},
                {"name": "narrow", "key": NARROW, "models": ["gpt-4o"]},
                {"name": "slow", "key": SLOW, "rpm": 1},
            ],
            "max_body_bytes": MAX_BODY,
        },
        "resources": {
            "eastus": {"endpoint": sims["eastus"].url, "keys": list(SIM_KEYS), "api": "v1"},
            "sweden": {
                "endpoint": sims["sweden"].url,
                "keys": list(SIM_KEYS),
                "api": "legacy",
                "api_version": "2024-10-21",
            },
            "slowtts": {"endpoint": slow_sim.url, "keys": list(SIM_KEYS), "api": "v1"},
        },
        "models": models,
        "routing": {"first_byte_timeout": 2, "cooldown": 1},
    }
    g = launch_gateway(tmp_path_factory.mktemp("media"), 0, config)
    yield g
    g.stop()


def client(gw: Gateway, key: str = GATEWAY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def served(sims: dict[str, Sim], fragment: str) -> dict[str, list[dict[str, Any]]]:
    """Per region, the recorded requests whose path holds ``fragment``."""
    return {n: [r for r in s.requests() if fragment in r["path"]] for n, s in sims.items()}


def usage(gw: Gateway) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/usage", headers={"api-key": ADMIN}, timeout=5)
    r.raise_for_status()
    return dict(r.json()["keys"].get("alice", {}))


def wait_cool(seconds: float = 1.2) -> None:
    time.sleep(seconds)  # routing.cooldown is 1 s: the throttled region is back


# --- images -----------------------------------------------------------------------------------


def test_images_generate_on_legacy_with_the_media_api_version(
    gw: Gateway, sim: dict[str, Sim]
) -> None:
    before = usage(gw).get("gpt-image-1", {})
    r = client(gw).images.generate(model="gpt-image-1", prompt="a red fox", n=2, quality="low")
    assert len(r.data) == 2
    picture = base64.b64decode(r.data[0].b64_json or "")
    assert picture == png(prompt_colour("a red fox", 0))  # the region's PNG, byte for byte
    assert r.usage is not None and r.usage.output_tokens == 2 * OUTPUT_TOKENS["low"]
    (sent,) = served(sim, "/images/generations")["sweden"]
    assert sent["path"] == "/openai/deployments/gpt-image-1/images/generations"
    assert sent["query"] == "api-version=2025-04-01-preview"  # the resource's 2024-10-21 is too old
    assert "authorization" not in sent["headers"]  # the caller's key never goes upstream
    after = usage(gw)["gpt-image-1"]
    assert after["images"] - before.get("images", 0) == 2
    assert after["completion_tokens"] - before.get("completion_tokens", 0) == 2 * 272


def test_images_fail_over_from_a_throttled_region_to_v1(gw: Gateway, sim: dict[str, Sim]) -> None:
    sim["sweden"].fault("429", deployment="gpt-image-1", retry_after=1, count=1)
    r = client(gw).images.generate(model="gpt-image-1", prompt="a cat")
    assert r.data and r.data[0].b64_json
    hits = served(sim, "/images/generations")
    assert len(hits["sweden"]) == 1 and len(hits["eastus"]) == 1
    v1 = hits["eastus"][0]
    assert v1["path"] == "/openai/v1/images/generations"
    assert v1["query"] == "api-version=preview"
    assert v1["body"]["model"] == "gpt-image-1"
    wait_cool()


def test_images_edit_uploads_real_files_and_fails_over(gw: Gateway, sim: dict[str, Sim]) -> None:
    sim["sweden"].fault("500", deployment="gpt-image-1", count=1)
    image, mask = png((10, 20, 30)), png((0, 0, 0))
    r = client(gw).images.edit(
        model="gpt-image-1",
        image=[("a.png", image, "image/png"), ("b.png", image, "image/png")],
        mask=("mask.png", mask, "image/png"),
        prompt="paint it blue",
    )
    assert r.data and base64.b64decode(r.data[0].b64_json or "").startswith(b"\x89PNG")
    assert r.usage is not None and r.usage.input_tokens_details.image_tokens == 2 * 194
    hits = served(sim, "/images/edits")
    # the same upload went to both regions: the failed legacy one and the v1 one
    for region in ("sweden", "eastus"):
        (sent,) = hits[region]
        assert [f["bytes"] for f in sent["body"]["image[]"]] == [len(image), len(image)]
        assert sent["body"]["mask"][0]["bytes"] == len(mask)
        assert sent["body"]["prompt"] == "paint it blue"
        assert sent["body"]["model"] == "gpt-image-1"
        assert sent["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    wait_cool()


def test_dall_e_counts_images_without_tokens(gw: Gateway, sim: dict[str, Sim]) -> None:
    before = usage(gw).get("dall-e-3", {}).get("images", 0)
    r = client(gw).images.generate(model="dall-e-3", prompt="a boat", response_format="b64_json")
    assert r.usage is None and r.data
    after = usage(gw)["dall-e-3"]
    assert after["images"] - before == 1
    assert after["prompt_tokens"] == 0


# --- transcriptions and translations ----------------------------------------------------------


def test_transcription_of_a_real_file_counts_seconds(
    gw: Gateway, sim: dict[str, Sim], tmp_path: Path
) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(CLIP)
    before = usage(gw).get("whisper", {})
    with path.open("rb") as f:
        r = client(gw).audio.transcriptions.create(model="whisper", file=f)
    assert r.text == TRANSCRIPT
    (sent,) = served(sim, "/audio/transcriptions")["sweden"]
    assert sent["path"] == "/openai/deployments/whisper/audio/transcriptions"
    assert sent["query"] == "api-version=2025-04-01-preview"
    assert sent["body"]["file"][0]["filename"] == "clip.wav"
    assert sent["body"]["file"][0]["bytes"] == len(CLIP)
    assert sent["body"]["model"] == "whisper"
    after = usage(gw)["whisper"]
    assert after["audio_seconds"] - before.get("audio_seconds", 0) == 2  # 1.5 s, rounded up
    # priced per minute (app/prices.yaml: $0.006): 2 s
    assert after["cost_usd"] - before.get("cost_usd", 0) == pytest.approx(2 * 0.006 / 60)


@pytest.mark.parametrize(
    ("fmt", "starts"),
    [("text", TRANSCRIPT), ("srt", "1\n00:00:00,000 --> 00:00:01,500"), ("vtt", "WEBVTT")],
)
def test_text_formats_pass_through_with_their_content_type(
    gw: Gateway, sim: dict[str, Sim], fmt: str, starts: str
) -> None:
    r = httpx.post(
        gw.base_url + "/audio/transcriptions",
        headers=gw.headers(),
        files={"file": ("clip.wav", CLIP, "audio/wav")},
        data={"model": "whisper", "response_format": fmt},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text.startswith(starts)
    text = client(gw).audio.transcriptions.create(
        model="whisper", file=("clip.wav", CLIP), response_format=fmt
    )
    assert isinstance(text, str) and text.startswith(starts)


def test_a_large_upload_renamed_for_the_deployment_fails_over_intact(
    gw: Gateway, sim: dict[str, Sim]
) -> None:
    sim["sweden"].fault("500", deployment="whisper", count=1)
    clip = wav(pcm(60.0))  # ~1 MB: written in pieces around the new model value
    r = client(gw).audio.transcriptions.create(
        model="speech-to-text", file=("long.wav", clip), response_format="verbose_json"
    )
    assert r.duration == 60.0
    hits = served(sim, "/audio/transcriptions")
    for region in ("sweden", "eastus"):
        (sent,) = hits[region]
        assert sent["body"]["model"] == "whisper"
        assert sent["body"]["response_format"] == "verbose_json"
        assert sent["body"]["file"][0]["bytes"] == len(clip)
    wait_cool()


def test_verbose_json_and_translation_fail_over_to_v1(gw: Gateway, sim: dict[str, Sim]) -> None:
    sim["sweden"].fault("429", deployment="whisper", retry_after=1, count=1)
    # (openai-python marks audio.translations deprecated: the request is made plainly)
    r = httpx.post(
        gw.base_url + "/audio/translations",
        headers=gw.headers(),
        files={"file": ("clip.wav", CLIP, "audio/wav")},
        data={"model": "whisper", "response_format": "verbose_json"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.json()["task"] == "translate" and r.json()["text"] == TRANSCRIPT
    hits = served(sim, "/audio/translations")
    assert len(hits["sweden"]) == 1
    (v1,) = hits["eastus"]
    assert v1["path"] == "/openai/v1/audio/translations" and v1["query"] == "api-version=preview"
    assert v1["body"]["model"] == "whisper" and v1["body"]["response_format"] == "verbose_json"
    wait_cool()


def test_streamed_transcription_events_and_tokens(gw: Gateway, sim: dict[str, Sim]) -> None:
    before = usage(gw).get("gpt-4o-transcribe", {}).get("prompt_tokens", 0)
    stream = client(gw).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("clip.wav", CLIP), stream=True
    )
    events = list(stream)
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == TRANSCRIPT
    done = events[-1]
    assert done.usage is not None
    after = usage(gw)["gpt-4o-transcribe"]
    assert after["prompt_tokens"] - before == done.usage.input_tokens


def test_azure_shaped_route_with_the_azure_client(gw: Gateway, sim: dict[str, Sim]) -> None:
    azure = openai.AzureOpenAI(
        azure_endpoint=gw.url, api_key=GATEWAY_KEY, api_version="2024-10-21", max_retries=0
    )
    r = azure.audio.transcriptions.create(model="whisper", file=("clip.wav", CLIP))
    assert r.text == TRANSCRIPT
    image = azure.images.generate(model="gpt-image-1", prompt="a tree")
    assert image.data


# --- speech -----------------------------------------------------------------------------------


def test_speech_streamed_to_a_file(gw: Gateway, sim: dict[str, Sim], tmp_path: Path) -> None:
    text = "hello from the gateway"
    path = tmp_path / "speech.wav"
    before = usage(gw).get("tts", {})
    with client(gw).audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input=text, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        response.stream_to_file(path)
    with wave.open(str(path)) as w:
        assert w.getnframes() == int(RATE * seconds_for(text))
    (sent,) = served(sim, "/audio/speech")["sweden"]
    assert sent["query"] == "api-version=2025-04-01-preview"
    after = usage(gw)["tts"]
    assert after["characters"] - before.get("characters", 0) == len(text)
    assert after["cost_usd"] - before.get("cost_usd", 0) == pytest.approx(len(text) * 15e-6)


def test_speech_fails_over_from_a_region_that_never_answers(
    gw: Gateway, sim: dict[str, Sim]
) -> None:
    sim["sweden"].fault("hang", deployment="tts", count=1)
    started = time.monotonic()
    r = httpx.post(
        gw.base_url + "/audio/speech",
        headers=gw.headers(),
        json={"model": "tts", "voice": "alloy", "input": "are you there", "response_format": "wav"},
        timeout=30,
    )
    assert r.status_code == 200 and r.content.startswith(b"RIFF")
    assert 2 <= time.monotonic() - started < 10  # routing.first_byte_timeout, then eastus
    hits = served(sim, "/audio/speech")
    assert len(hits["sweden"]) == 1 and len(hits["eastus"]) == 1
    wait_cool()


def test_speech_bytes_arrive_as_they_are_made(gw: Gateway) -> None:
    body = {
        "model": "slow-tts",
        "voice": "alloy",
        "input": "one two three",
        "response_format": "wav",
    }
    arrivals: list[float] = []
    audio = b""
    with httpx.stream(
        "POST", gw.base_url + "/audio/speech", headers=gw.headers(), json=body, timeout=30
    ) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            arrivals.append(time.monotonic())
            audio += piece
    assert audio == wav(pcm(seconds_for("one two three")))
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] >= 0.5  # not held back


def test_speech_sse_stream_format(gw: Gateway, sim: dict[str, Sim]) -> None:
    body = {
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "input": "hello there",
        "response_format": "wav",
        "stream_format": "sse",
    }
    before = usage(gw).get("gpt-4o-mini-tts", {})
    r = httpx.post(gw.base_url + "/audio/speech", headers=gw.headers(), json=body, timeout=30)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert '"speech.audio.done"' in events[-1]
    after = usage(gw)["gpt-4o-mini-tts"]
    assert after["characters"] - before.get("characters", 0) == len("hello there")
    assert after["prompt_tokens"] - before.get("prompt_tokens", 0) == 2


def test_a_region_that_breaks_mid_speech_ends_the_answer_unfinished(
    gw: Gateway, slow_sim: Sim
) -> None:
    slow_sim.reset()
    slow_sim.fault("drop", after_chunks=2, count=1)
    body = {
        "model": "slow-tts",
        "voice": "alloy",
        "input": "one two three",
        "response_format": "wav",
    }
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(gw.base_url + "/audio/speech", headers=gw.headers(), json=body, timeout=30)
    slow_sim.reset()
    time.sleep(1.2)  # the broken region cooled down for routing.cooldown


# --- keys, limits, errors ---------------------------------------------------------------------


def test_allowlist_rpm_and_body_limit(gw: Gateway, sim: dict[str, Sim]) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, NARROW).audio.transcriptions.create(model="whisper", file=("a.wav", CLIP))
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, NARROW).images.generate(model="gpt-image-1", prompt="x")
    slow = client(gw, SLOW)
    slow.audio.speech.create(model="tts", voice="alloy", input="hi").read()
    with pytest.raises(openai.RateLimitError):
        slow.audio.speech.create(model="tts", voice="alloy", input="hi again")
    sent = sum(len(v) for v in served(sim, "/audio/").values())
    big = b"RIFF" + bytes(MAX_BODY)
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).audio.transcriptions.create(model="whisper", file=("big.wav", big))
    assert info.value.status_code == 413
    assert sum(len(v) for v in served(sim, "/audio/").values()) == sent  # never sent upstream


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"data": {"model": "whisper"}, "files": {"audio": ("a.wav", CLIP)}}, "file"),
        ({"data": {"model": "whisper"}}, None),  # form-urlencoded: not an upload
        ({"files": {"file": ("a.wav", CLIP)}}, "model"),
        (
            {"content": b'{"model": "whisper"}', "headers": {"content-type": "application/json"}},
            None,
        ),
    ],
)
def test_bad_uploads_are_openai_shaped_400s(
    gw: Gateway, kwargs: dict[str, Any], param: str | None
) -> None:
    headers = {**gw.headers(), **kwargs.pop("headers", {})}
    r = httpx.post(gw.base_url + "/audio/transcriptions", headers=headers, timeout=10, **kwargs)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


# --- Open WebUI, as its backend sends them ----------------------------------------------------


def test_open_webui_stt_tts_and_images(gw: Gateway, sim: dict[str, Sim], tmp_path: Path) -> None:
    """The requests of open_webui/routers/audio.py and images.py (engine "openai"), with
    `*_OPENAI_API_BASE_URL` = the gateway's /v1 and its key as `*_OPENAI_API_KEY`."""
    base, auth = gw.base_url, {"Authorization": f"Bearer {GATEWAY_KEY}"}
    # STT: requests.post(url=f"{base}/audio/transcriptions", headers=..., files={"file":
    # (filename, open(file_path, "rb"))}, data={"model": STT_MODEL, "language": ...})
    path = tmp_path / "0b1f.wav"
    path.write_bytes(CLIP)
    with path.open("rb") as f:
        r = httpx.post(
            f"{base}/audio/transcriptions",
            headers=auth,
            files={"file": (path.name, f)},
            data={"model": "whisper", "language": "en"},
            timeout=30,
        )
    assert r.status_code == 200 and r.json()["text"] == TRANSCRIPT
    # TTS: session.post(url=f"{base}/audio/speech", json={**payload, "model": TTS_MODEL},
    # headers={"Content-Type": "application/json", "Authorization": ...}); the bytes are
    # written to an .mp3 file as they are.
    payload = {"input": "Hello from Open WebUI.", "voice": "alloy", "model": "tts"}
    r = httpx.post(
        f"{base}/audio/speech",
        json=payload,
        headers={"Content-Type": "application/json", **auth},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    assert r.content.startswith(b"RIFF")  # the simulator's audio under mp3's content type
    # Images: requests.post(url=f"{base}/images/generations", json={"model", "prompt",
    # "n", "size", "response_format": "b64_json"}, headers=...); res["data"][i]["b64_json"]
    data = {
        "model": "gpt-image-1",
        "prompt": "a lighthouse",
        "n": 1,
        "size": "1024x1024",
        "response_format": "b64_json",
    }
    r = httpx.post(
        f"{base}/images/generations",
        json=data,
        headers={**auth, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200
    picture = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert io.BytesIO(picture).read(4) == b"\x89PNG"


def test_metrics_name_the_operations(gw: Gateway) -> None:
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    for api in ("images", "images_edits", "transcriptions", "translations", "speech"):
        assert f'api="{api}"' in text, api
