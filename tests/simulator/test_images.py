"""Tests for the simulator's image operations (app.simulator.images) and its form reader."""

from __future__ import annotations

import base64
import struct
import zlib

import httpx
import pytest

from app.simulator import Fault, Simulator
from app.simulator.forms import boundary_of, parse_form
from app.simulator.images import INPUT_IMAGE_TOKENS, OUTPUT_TOKENS, png, prompt_colour

AUTH = {"api-key": "sim-key-1"}
V1_GEN = "/openai/v1/images/generations?api-version=preview"
V1_EDIT = "/openai/v1/images/edits?api-version=preview"
LEGACY = "/openai/deployments/{}/images/{}?api-version=2025-04-01-preview"

pytestmark = pytest.mark.anyio


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, first pixel RGB) of a PNG, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        (crc,) = struct.unpack(">I", data[pos + 8 + size : pos + 12 + size])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    raw = zlib.decompress(idat)
    return width, height, raw[1:4]


def test_png_is_a_real_image_in_the_prompt_colour() -> None:
    colour = prompt_colour("a red fox", 0)
    assert decode_png(png(colour)) == (16, 16, bytes(colour))
    assert prompt_colour("a red fox", 1) != colour


async def test_generation_gpt_image_tokens_and_png(client: httpx.AsyncClient) -> None:
    body = {"model": "gpt-image-1", "prompt": "a red fox in snow", "n": 2, "quality": "high"}
    r = await client.post(V1_GEN, headers=AUTH, json=body)
    assert r.status_code == 200
    answer = r.json()
    assert [decode_png(base64.b64decode(d["b64_json"]))[2] for d in answer["data"]] == [
        bytes(prompt_colour("a red fox in snow", i)) for i in range(2)
    ]
    assert answer["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 5},
        "output_tokens": 2 * OUTPUT_TOKENS["high"],
        "total_tokens": 5 + 2 * OUTPUT_TOKENS["high"],
    }
    assert answer["quality"] == "high"
    assert r.headers["x-ms-region"] == "eastus"


async def test_generation_dalle_has_no_usage_and_one_image(client: httpx.AsyncClient) -> None:
    url = LEGACY.format("dall-e-3", "generations")
    r = await client.post(url, headers=AUTH, json={"prompt": "a cat", "response_format": "url"})
    assert r.status_code == 200
    answer = r.json()
    assert "usage" not in answer
    assert answer["data"][0]["url"].startswith("https://")
    assert answer["data"][0]["revised_prompt"] == "a cat"
    r = await client.post(url, headers=AUTH, json={"prompt": "a cat", "n": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "n"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-image-1"}, None),
        ({"model": "gpt-image-1", "prompt": "x", "n": 0}, "n"),
        ({"model": "gpt-image-1", "prompt": "x", "response_format": "url"}, "response_format"),
    ],
)
async def test_generation_bad_requests_400(
    client: httpx.AsyncClient, body: dict[str, object], param: str | None
) -> None:
    r = await client.post(V1_GEN, headers=AUTH, json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_v1_requires_api_version_and_known_model(client: httpx.AsyncClient) -> None:
    body = {"model": "gpt-image-1", "prompt": "x"}
    no_version = await client.post("/openai/v1/images/generations", headers=AUTH, json=body)
    assert no_version.status_code == 404
    missing = await client.post(V1_GEN, headers=AUTH, json={**body, "model": "nope"})
    assert missing.json()["error"]["code"] == "DeploymentNotFound"


async def test_edit_counts_every_uploaded_image(client: httpx.AsyncClient, sim: Simulator) -> None:
    image = png((1, 2, 3))
    files = [
        ("image[]", ("a.png", image, "image/png")),
        ("image[]", ("b.png", image, "image/png")),
        ("mask", ("m.png", image, "image/png")),
    ]
    data = {"model": "gpt-image-1", "prompt": "paint it blue"}
    r = await client.post(V1_EDIT, headers=AUTH, files=files, data=data)
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert usage["input_tokens_details"] == {
        "image_tokens": 2 * INPUT_IMAGE_TOKENS,
        "text_tokens": 3,
    }
    recorded = sim.recorded_requests()[-1]["body"]
    assert recorded["model"] == "gpt-image-1"
    assert [f["bytes"] for f in recorded["image[]"]] == [len(image), len(image)]
    assert sim.stats.by_deployment == {"gpt-image-1": 1}


async def test_edit_legacy_single_image_and_errors(client: httpx.AsyncClient) -> None:
    url = LEGACY.format("gpt-image-1", "edits")
    image = ("a.png", png((9, 9, 9)), "image/png")
    ok = await client.post(url, headers=AUTH, files={"image": image}, data={"prompt": "x"})
    assert ok.status_code == 200
    assert ok.json()["usage"]["input_tokens_details"]["image_tokens"] == INPUT_IMAGE_TOKENS
    no_image = await client.post(url, headers=AUTH, files={"f": image}, data={"prompt": "x"})
    assert no_image.json()["error"]["param"] == "image"
    bad_mask = await client.post(
        url,
        headers=AUTH,
        files={"image": image, "mask": ("m.jpg", b"\xff\xd8jpeg", "image/jpeg")},
        data={"prompt": "x"},
    )
    assert bad_mask.json()["error"]["param"] == "mask"
    not_multipart = await client.post(url, headers=AUTH, json={"prompt": "x"})
    assert not_multipart.status_code == 400
    dalle = await client.post(
        LEGACY.format("dall-e-3", "edits"),
        headers=AUTH,
        files={"image": image},
        data={"prompt": "x"},
    )
    assert dalle.json()["error"]["code"] == "OperationNotSupported"


async def test_shared_faults_apply_to_images(client: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault("429", deployment="gpt-image-1", retry_after=2, count=1))
    body = {"model": "gpt-image-1", "prompt": "x"}
    r = await client.post(V1_GEN, headers=AUTH, json=body)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert "ImageGenerations_Create" in r.json()["error"]["message"]
    sim.add_fault(Fault("500", count=1))
    files = {"image": ("a.png", png((0, 0, 0)), "image/png")}
    r = await client.post(V1_EDIT, headers=AUTH, files=files, data={**body})
    assert r.status_code == 500
    sim.revoke_key("sim-key-1")
    assert (await client.post(V1_GEN, headers=AUTH, json=body)).status_code == 401
    assert sim.stats.by_status == {"429": 1, "500": 1, "401": 1}


def test_parse_form_keeps_repeated_fields_and_files() -> None:
    request = httpx.Request(
        "POST",
        "http://x",
        data={"model": "m", "include[]": ["a", "b"]},
        files=[("file", ("a.wav", b"RIFF", "audio/wav"))],
    )
    body = request.read()
    form = parse_form(body, request.headers["content-type"].encode())
    assert form is not None
    assert form.text("model") == "m"
    assert form.fields["include[]"] == ["a", "b"]
    assert form.uploads("file")[0].data == b"RIFF"
    assert parse_form(body, b"application/json") is None
    assert parse_form(b"garbage", b"multipart/form-data; boundary=zz") is None
    assert boundary_of(b"multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of(b"multipart/form-data") is None
