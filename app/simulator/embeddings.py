"""Embeddings: ``POST /openai/v1/embeddings`` (deployment = body ``model``) and
``POST /openai/deployments/{deployment}/embeddings?api-version=X``.

``input`` is a string, a list of strings, a list of token ids or a list of token-id lists.
Each input gets a deterministic unit vector (the same input always gets the same vector)
of the model's size, or ``dimensions`` (text-embedding-3 models only).
``encoding_format`` ``float`` (default) gives JSON numbers, ``base64`` the little-endian
float32 bytes, as OpenAI sends them (the openai SDK asks for base64 by default).
``prompt_tokens`` = words of each string input (at least 1) + length of each token list.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import struct
import sys
from array import array
from collections.abc import Mapping
from typing import Any, Final

import orjson

from app.simulator import errors
from app.simulator.asgi import RATELIMIT
from app.simulator.errors import invalid_request
from app.simulator.models import is_embedding
from app.simulator.operation import Call, Operation, deployment_route

_LEGACY_SUFFIX: Final = "/embeddings"
MAX_INPUTS: Final = 2048
DEFAULT_DIMENSIONS: Final = 1536
_DIMENSIONS: Final = {"text-embedding-3-large": 3072}


# v1 (deployment in the body) and legacy (in the path, api-version).
route: Final = deployment_route(_LEGACY_SUFFIX, v1_needs_version=False)


def native_dimensions(deployment: str) -> int:
    """The vector size a deployment's model returns by default."""
    sizes = (n for name, n in _DIMENSIONS.items() if deployment.startswith(name))
    return next(sizes, DEFAULT_DIMENSIONS)


def inputs(raw: Any) -> list[str | list[int]] | None:
    """The request's inputs as a list (strings or token lists), or None if malformed."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(_is_token(t) for t in raw):
        return [raw]
    result: list[str | list[int]] = []
    for item in raw:
        if isinstance(item, str) or _is_token_list(item):
            result.append(item)
        else:
            return None
    return result


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_token(t) for t in value)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate(data: Mapping[str, Any], deployment: str) -> bytes | None:
    """A 400 error body if the request is invalid, else None."""
    raw = data.get("input")
    if raw is None:
        return invalid_request("Missing required parameter: 'input'.", "input")
    items = inputs(raw)
    if items is None or any(i == "" for i in items):
        return invalid_request(
            "'$.input' is invalid. Please check the API reference:"
            " https://platform.openai.com/docs/api-reference.",
            "input",
            "invalid_value",
        )
    if len(items) > MAX_INPUTS:
        return invalid_request(
            f"Invalid 'input': maximum {MAX_INPUTS} inputs per request, got {len(items)}.",
            "input",
            "array_above_max_length",
        )
    fmt = data.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        return invalid_request(
            f"Invalid value for 'encoding_format': expected 'float' or 'base64', got {fmt!r}.",
            "encoding_format",
            "invalid_value",
        )
    dims = data.get("dimensions")
    if dims is not None:
        if not deployment.startswith("text-embedding-3"):
            return invalid_request(
                "This model does not support specifying dimensions.", "dimensions"
            )
        native = native_dimensions(deployment)
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= native:
            return invalid_request(
                f"Invalid 'dimensions': expected an integer between 1 and {native}.",
                "dimensions",
                "invalid_value",
            )
    return None


@functools.lru_cache(maxsize=1024)
def vector_bytes(seed: bytes, size: int) -> bytes:
    """A deterministic unit vector of ``size`` little-endian float32 values for one input.

    Pure, so memoized: the same input costs its Python loops once, which keeps the
    simulator's own cost per request small next to the gateway it measures.
    """
    raw = hashlib.shake_256(seed).digest(size)
    norm = math.sqrt(sum((b - 127.5) ** 2 for b in raw)) or 1.0
    return struct.pack(f"<{size}f", *[(b - 127.5) / norm for b in raw])


def encode(item: str | list[int], size: int, fmt: str) -> Any:
    """One input's vector as JSON numbers, or as base64 of little-endian float32."""
    data = vector_bytes(item.encode() if isinstance(item, str) else orjson.dumps(item), size)
    if fmt == "base64":
        return base64.b64encode(data).decode()
    vec = array("f")
    vec.frombytes(data)
    if sys.byteorder != "little":
        vec.byteswap()
    return vec.tolist()


def count_tokens(items: list[str | list[int]]) -> int:
    """Words of each string (at least 1) plus the length of each token list."""
    return sum(max(1, len(i.split())) if isinstance(i, str) else len(i) for i in items)


def embeddings_json(data: Mapping[str, Any], deployment: str) -> bytes:
    """The whole ``list`` of embeddings for a validated request."""
    items = inputs(data["input"]) or []
    size = data.get("dimensions") or native_dimensions(deployment)
    fmt = data.get("encoding_format") or "float"
    tokens = count_tokens(items)
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(item, size, fmt)}
            for i, item in enumerate(items)
        ],
        "model": deployment,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body)


async def handle(call: Call) -> int | None:
    """Validate, then answer (a "drop" fault cuts the body half-way)."""
    deployment, reply = call.deployment, call.reply
    if not is_embedding(deployment):
        return await reply.json(400, errors.operation_not_supported("embeddings", deployment))
    error = validate(call.data, deployment)
    if error is not None:
        return await reply.json(400, error)
    payload = embeddings_json(call.data, deployment)
    if call.fault is not None and call.fault.mode == "drop":
        return await reply.drop_json(payload)
    return await reply.json(200, payload, RATELIMIT)


OPERATION: Final = Operation(name="Embeddings_Create", route=route, handle=handle)
