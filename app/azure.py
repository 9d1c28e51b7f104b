"""Pure functions that turn an OpenAI chat request into an Azure one.

Everything Azure-specific about the request lives here: the v1 and legacy URL
forms, the `api-key` header, the body rewrite (deployment as `model`, the
reasoning-model parameter rules, asking for the usage chunk) and Retry-After
parsing. No I/O; the hot path calls these with already-parsed values.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

LEGACY_API_VERSION = "2024-10-21"

# Parameters Azure's reasoning deployments answer 400 `unsupported_parameter` to.
REASONING_UNSUPPORTED = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)


def normalize_endpoint(endpoint: str) -> str:
    """`https://x.openai.azure.com/openai/v1/` -> `https://x.openai.azure.com`."""
    base = endpoint.strip().rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.rstrip("/")


def chat_url(endpoint: str, api: str, deployment: str, api_version: str | None) -> str:
    """The chat-completions URL of one deployment, in the resource's URL form."""
    base = normalize_endpoint(endpoint)
    if api == "v1":
        return f"{base}/openai/v1/chat/completions"
    version = api_version or LEGACY_API_VERSION
    return f"{base}/openai/deployments/{deployment}/chat/completions?api-version={version}"


_CHAT_VARIANT = re.compile(r"-chat(?:-|$)")


def is_reasoning(name: str) -> bool:
    """Default for `reasoning:`: o1*, o3*, o4*, gpt-5* except the chat variants.

    A chat variant has a `-chat` segment: `gpt-5-chat`, `gpt-5.2-chat`, and with a
    version or alias after it, `gpt-5-chat-2025-08-07`, `gpt-5-chat-latest`.
    """
    n = name.lower()
    if n.startswith(("o1", "o3", "o4")):
        return True
    return n.startswith("gpt-5") and _CHAT_VARIANT.search(n) is None


def rewrite_body(
    body: dict[str, Any],
    *,
    deployment: str,
    reasoning: bool,
    want_usage: bool,
) -> bytes:
    """Serialize the request for one deployment; `body` is not modified.

    - `model` becomes the deployment name (v1 needs it; legacy ignores it);
    - reasoning deployments get `max_tokens` renamed to `max_completion_tokens`
      and the sampling parameters they reject removed;
    - streams ask for the final usage chunk when `want_usage`.
    """
    out = dict(body)
    out["model"] = deployment
    if reasoning:
        if "max_tokens" in out:
            value = out.pop("max_tokens")
            out.setdefault("max_completion_tokens", value)
        for name in REASONING_UNSUPPORTED:
            out.pop(name, None)
    if want_usage and out.get("stream") is True:
        options = out.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        out["stream_options"] = options
    return orjson.dumps(out)


def request_headers(key: str) -> dict[str, str]:
    """Headers for one upstream call; nothing of the caller's is copied."""
    return {"api-key": key, "content-type": "application/json"}


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `x-ms-retry-after-ms` or `retry-after`."""
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                ms = float(value)
            except ValueError:
                continue
            if math.isfinite(ms) and ms >= 0:
                return ms / 1000.0
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
