"""What kind of model a deployment runs, and the text rules every operation shares."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, Final

REASONING_TOKENS: Final = 16
MAX_REPLY_CHARS: Final = 200

_REASONING_PREFIXES: Final = ("o1", "o3", "o4", "gpt-5")
# Azure's behaviour, written out here on purpose rather than imported from
# app.azure: if the gateway's list were wrong, a shared list would hide it.
UNSUPPORTED_FOR_REASONING: Final = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)
_MODEL_VERSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "gpt-4o": "gpt-4o-2024-11-20",
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
        "o3-mini": "o3-mini-2025-01-31",
        "gpt-5.2-chat": "gpt-5.2-chat-2025-12-11",
        # Azure's model router answers with the model it routed to
        "model-router": "gpt-4.1-nano-2025-04-14",
    }
)


def counts_image_tokens(deployment: str) -> bool:
    """Whether an image deployment reports token usage (gpt-image-1 does; dall-e-3 does not)."""
    return deployment.startswith("gpt-image")


def transcribes_with_tokens(deployment: str) -> bool:
    """gpt-4o(-mini)-transcribe: token usage, json/text only, ``stream=true`` events.

    Any other transcription deployment behaves as whisper: every response format,
    duration usage, and ``stream`` ignored.
    """
    return "transcribe" in deployment


def speaks_sse(deployment: str) -> bool:
    """Whether a speech deployment can answer ``stream_format: sse`` (gpt-4o-mini-tts)."""
    return deployment.startswith("gpt-4o") and "tts" in deployment


def is_reasoning(deployment: str) -> bool:
    """Whether a deployment name denotes a reasoning model (o1/o3/o4/gpt-5, not ``-chat``)."""
    return deployment.startswith(_REASONING_PREFIXES) and not deployment.endswith("-chat")


def is_embedding(deployment: str) -> bool:
    """Whether a deployment name denotes an embeddings model (``text-embedding-*``)."""
    return deployment.startswith("text-embedding")


def model_version(deployment: str) -> str:
    """The model name Azure reports for a deployment."""
    return _MODEL_VERSIONS.get(deployment, deployment)


def cap_reply(reply: str, limit: int | None) -> tuple[str, str]:
    """Cut ``reply`` to ``limit`` words; returns (text, finish_reason)."""
    if limit is None:
        return reply, "stop"
    words = reply.split()
    if len(words) <= limit:
        return reply, "stop"
    return " ".join(words[:limit]), "length"


def split_pieces(text: str, n: int) -> list[str]:
    """Split ``text`` into at most ``n`` non-empty pieces of near-equal length."""
    size = len(text)
    bounds = [i * size // n for i in range(n + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def content_text(content: Any, part_types: Collection[str] = ("text",)) -> str:
    """Text of a message ``content``: a string, or the ``text`` of its parts whose ``type``
    is one of ``part_types``, joined by single spaces (other parts ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict)
            and p.get("type") in part_types
            and isinstance(p.get("text"), str)
        )
    return ""
