"""Pure functions about Azure shared by every operation.

Endpoint normalization, which deployments are reasoning models, the `api-key`
or Bearer header and Retry-After parsing. What differs per operation (its URL
forms and body rewrite) lives in `app.operations`. No I/O.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

LEGACY_API_VERSION = "2024-10-21"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What an `endpoint:` value says: the base URL, and what else was pasted with it."""

    base: str  # scheme://host[:port][/prefix], what `/openai/...` is appended to
    deployment: str | None = None  # from `.../openai/deployments/{name}/...`
    api_version: str | None = None  # from `?api-version=...`
    form: str | None = None  # "v1" or "legacy" when the path said which
    dropped: str = ""  # the part of the path after `/openai` that is not used


# Hosts of Azure resources: the URL path there is Azure's, never a proxy prefix.
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


def parse_endpoint(value: str) -> Endpoint:
    """Understand an endpoint as written or pasted from the portal or an SDK sample.

    `https://x.openai.azure.com`, with or without `/`, `/openai` or `/openai/v1`, and
    whole operation URLs (`.../openai/deployments/gpt-4o/chat/completions?api-version=...`,
    `.../openai/v1/chat/completions`) give the same base; the deployment and
    api-version found are returned for the caller to report or use. A path
    before `/openai` (an API Management prefix) is kept on other hosts. Anything
    else raises `ValueError` with a message saying what to write instead.
    """
    text = value.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL like https://NAME.openai.azure.com")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password; put keys under keys:")
    origin = f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2]}"
    segments = [s for s in parts.path.split("/") if s]
    lowered = [s.lower() for s in segments]
    cut = lowered.index("openai") if "openai" in lowered else len(segments)
    prefix, rest = segments[:cut], segments[cut + 1 :]
    host = parts.hostname.lower()
    if prefix and host.endswith(_AZURE_HOSTS):
        hint = (
            " (a Foundry project endpoint: the gateway needs the resource's own)"
            if lowered[:2] == ["api", "projects"]
            else ""
        )
        raise ValueError(
            f"the path /{'/'.join(prefix)} is not part of an Azure OpenAI endpoint{hint}; "
            f"write just {origin}"
        )
    base = origin + "".join("/" + s for s in prefix)
    deployment = form = None
    kind = [s.lower() for s in rest[:1]]
    if kind == ["v1"]:
        form, tail = "v1", rest[1:]
    elif kind == ["deployments"] and len(rest) >= 2:
        deployment = urllib.parse.unquote(rest[1])
        form, tail = "legacy", rest[2:]
    elif not rest:
        tail = []
    else:
        raise ValueError(
            f"the path {parts.path} is not an Azure OpenAI URL the gateway understands; "
            f"write just {base}"
        )
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    version = query.pop("api-version", [None])[-1] or None
    if query:
        raise ValueError(
            "query parameter(s) " + ", ".join(sorted(query)) + " are not used; write just " + base
        )
    return Endpoint(base, deployment, version, form, "/".join(tail))


def normalize_endpoint(endpoint: str) -> str:
    """`https://x.openai.azure.com/openai/v1/` -> `https://x.openai.azure.com`."""
    try:
        return parse_endpoint(endpoint).base
    except ValueError:  # config validation refuses these; keep the text for messages
        return endpoint.strip().rstrip("/")


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


def request_headers(key: str) -> dict[str, str]:
    """Headers for one upstream call; nothing of the caller's is copied."""
    return {"api-key": key, "content-type": "application/json"}


def bearer_headers(token: str) -> dict[str, str]:
    """Headers for one upstream call with a Microsoft Entra ID token instead of a key."""
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


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
