"""Chat completions: `POST .../chat/completions`.

Upstream: `{endpoint}/openai/v1/chat/completions` (deployment in `model`) or,
on a legacy resource, `/openai/deployments/{deployment}/chat/completions
?api-version=...`. The body rewrite applies Azure's reasoning-deployment rules
and asks streams for their usage chunk; a stream is relayed through
`relay.SSEFilter`, which drops Azure's filter-only chunks and ends at `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

from app import relay
from app.errors import BadRequest
from app.operations.base import JSON, Answer, Facts, Operation, Parsed, Place

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


def chat_url(place: Place) -> str:
    """The chat-completions URL of one deployment, in the resource's URL form."""
    if place.api == "v1":
        return f"{place.base}/openai/v1/chat/completions"
    return (
        f"{place.base}/openai/deployments/{place.deployment}/chat/completions"
        f"?api-version={place.api_version}"
    )


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


class ChatScan(relay.SSEFilter):
    """`relay.SSEFilter` as an operation's stream scanner."""

    __slots__ = ()
    response_id: str | None = None  # chat completions are not stored

    def tokens(self) -> dict[str, int]:
        return relay.token_counts(self.usage) if self.usage is not None else {}

    def relayed(self) -> int:
        return self.deltas

    def broken(self, message: str) -> bytes:
        return relay.error_event(message)


class Chat(Operation):
    name = "chat"
    # `/openai/chat/completions`: @ai-sdk/azure (Chatbox's Azure provider) with baseURL
    # `{origin}/openai` on a host that is not *.azure.com leaves out `/v1` and `api-version`.
    paths = frozenset(
        {
            "/v1/chat/completions",
            "/chat/completions",
            "/openai/v1/chat/completions",
            "/openai/chat/completions",
        }
    )
    suffix = "/chat/completions"
    answer = Answer.JSON

    def url(self, place: Place) -> str:
        return chat_url(place)

    def validate(self, data: dict[str, Any]) -> None:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(
                "Missing required parameter: 'messages' (a non-empty array).", param="messages"
            )

    def rewrite(self, parsed: Parsed, deployment: str, reasoning: bool) -> bytes:
        return rewrite_body(
            parsed.data, deployment=deployment, reasoning=reasoning, want_usage=True
        )

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        usage, model = relay.usage_of(body)
        return Facts(relay.token_counts(usage) if usage is not None else {}, model=model)

    def scan(self, parsed: Parsed | None) -> ChatScan:
        options = parsed.data.get("stream_options") if parsed is not None else None
        return ChatScan(isinstance(options, dict) and options.get("include_usage") is True)


CHAT = Chat()
