"""Images: generations (JSON) and edits (multipart), v1 and legacy deployment routes.

``POST /openai/deployments/{deployment}/images/generations?api-version=X`` and
``/openai/v1/images/generations?api-version=preview`` (deployment = body ``model``);
the same for ``/images/edits``, whose body is a form: ``image`` (or ``image[]``, one or
more files), optional ``mask``, ``prompt``, ``model`` (v1), ``n``, ``size``, ``quality``.

Every image is a real 16x16 PNG whose colour comes from the prompt, returned as
``b64_json`` (dall-e-3 with ``response_format: url`` gets a URL instead).

Usage, for gpt-image deployments only (dall-e-3 reports none), deterministic:

* ``input_tokens_details.text_tokens`` = whitespace-separated words of the prompt (>= 1);
* ``input_tokens_details.image_tokens`` = ``INPUT_IMAGE_TOKENS`` per uploaded image (edits);
* ``output_tokens`` = ``n`` x ``OUTPUT_TOKENS[quality]`` (``auto`` and absent: medium);
* ``total_tokens`` = input + output.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from app.simulator.asgi import RATELIMIT
from app.simulator.errors import invalid_request
from app.simulator.forms import Upload
from app.simulator.models import counts_image_tokens
from app.simulator.operation import Call, Operation, deployment_route

SIDE: Final = 16
INPUT_IMAGE_TOKENS: Final = 194
OUTPUT_TOKENS: Final[Mapping[str, int]] = MappingProxyType(
    {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
)
IMAGE_URL: Final = "https://dalleprodsec.blob.core.windows.net/private/images/sim/generated.png"
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_SAFE: Final = {"filtered": False, "severity": "safe"}
_CONTENT_FILTER: Final = MappingProxyType(
    {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
)


# --- pure helpers ----------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(rgb: tuple[int, int, int], side: int = SIDE) -> bytes:
    """A real ``side`` x ``side`` PNG filled with one colour (8-bit RGB)."""
    row = b"\x00" + bytes(rgb) * side
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"".join(
        (
            _PNG_MAGIC,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(row * side)),
            _png_chunk(b"IEND", b""),
        )
    )


def prompt_colour(prompt: str, index: int) -> tuple[int, int, int]:
    """A colour that depends on the prompt and on the image's index."""
    digest = hashlib.sha256(f"{index}:{prompt}".encode()).digest()
    return digest[0], digest[1], digest[2]


def text_tokens(prompt: str) -> int:
    """Words of the prompt, at least 1."""
    return max(1, len(prompt.split()))


def usage(prompt: str, n: int, quality: str, input_images: int) -> dict[str, Any]:
    """gpt-image token usage for ``n`` images (see the module docstring)."""
    text = text_tokens(prompt)
    image = INPUT_IMAGE_TOKENS * input_images
    output = n * OUTPUT_TOKENS.get(quality, OUTPUT_TOKENS["medium"])
    return {
        "input_tokens": text + image,
        "input_tokens_details": {"image_tokens": image, "text_tokens": text},
        "output_tokens": output,
        "total_tokens": text + image + output,
    }


def _field(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


def image_count(data: Mapping[str, Any], single_only: bool) -> int | bytes:
    """``n`` (JSON number or form text), or the 400 body for a bad one."""
    raw = data.get("n", 1)
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 10:
        return invalid_request("Invalid 'n': expected an integer from 1 to 10.", "n")
    if single_only and raw != 1:
        return invalid_request("dall-e-3 only supports n=1.", "n", "invalid_value")
    return raw


def images_json(
    deployment: str, data: Mapping[str, Any], prompt: str, n: int, input_images: int
) -> bytes | None:
    """The whole answer, or None when the request asks for a format the model lacks."""
    tokens = counts_image_tokens(deployment)
    response_format = _field(data, "response_format") or "b64_json"
    if tokens and response_format != "b64_json":
        return None
    quality = _field(data, "quality") or "auto"
    items: list[dict[str, Any]] = []
    for i in range(n):
        item: dict[str, Any]
        if response_format == "url":
            item = {"url": IMAGE_URL}
        else:
            item = {"b64_json": base64.b64encode(png(prompt_colour(prompt, i))).decode()}
        if not tokens:
            item["revised_prompt"] = prompt
            item["content_filter_results"] = dict(_CONTENT_FILTER)
        items.append(item)
    answer: dict[str, Any] = {"created": int(time.time()), "data": items}
    if tokens:
        answer["background"] = "opaque"
        answer["output_format"] = "png"
        answer["quality"] = "medium" if quality == "auto" else quality
        answer["size"] = _field(data, "size") or "1024x1024"
        answer["usage"] = usage(prompt, n, quality, input_images)
    return orjson.dumps(answer)


# --- answering -------------------------------------------------------------------------------


def _unsupported(operation: str, deployment: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "code": "OperationNotSupported",
                "message": f"The {operation} operation does not work with the specified model,"
                f" {deployment}. Please choose different model and try again.",
            }
        }
    )


async def _answer(call: Call, prompt: str | None, uploads: list[Upload]) -> int | None:
    reply = call.reply
    if not prompt:
        return await reply.json(400, invalid_request("Missing required parameter: 'prompt'."))
    single_only = not counts_image_tokens(call.deployment)
    n = image_count(call.data, single_only)
    if isinstance(n, bytes):
        return await reply.json(400, n)
    payload = images_json(call.deployment, call.data, prompt, n, len(uploads))
    if payload is None:
        msg = f"The model {call.deployment} always returns b64_json; 'url' is not supported."
        return await reply.json(400, invalid_request(msg, "response_format"))
    if call.fault is not None and call.fault.mode == "drop":
        return await reply.drop_json(payload)
    return await reply.json(200, payload, RATELIMIT)


async def handle_generation(call: Call) -> int | None:
    """``images/generations``: JSON in, images out."""
    return await _answer(call, _field(call.data, "prompt"), [])


async def handle_edit(call: Call) -> int | None:
    """``images/edits``: a form with the image(s), an optional mask and the prompt."""
    if not counts_image_tokens(call.deployment):
        return await call.reply.json(400, _unsupported("imagesEdit", call.deployment))
    assert call.form is not None
    uploads = call.form.uploads("image")
    if not uploads or not all(u.data for u in uploads):
        msg = "Missing required parameter: 'image' (one or more image files)."
        return await call.reply.json(400, invalid_request(msg, "image"))
    masks = call.form.uploads("mask")
    if masks and not masks[0].data.startswith(_PNG_MAGIC):
        msg = "Invalid 'mask': the mask must be a PNG image."
        return await call.reply.json(400, invalid_request(msg, "mask", "invalid_image_format"))
    return await _answer(call, call.form.text("prompt"), uploads)


GENERATIONS: Final = Operation(
    name="ImageGenerations_Create",
    route=deployment_route("/images/generations"),
    handle=handle_generation,
)
EDITS: Final = Operation(
    name="ImageEdits_Create",
    route=deployment_route("/images/edits", form_body=True),
    handle=handle_edit,
)
OPERATIONS: Final = (GENERATIONS, EDITS)
