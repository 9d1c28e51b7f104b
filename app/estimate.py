"""Token estimates made before (or without) Azure's count, from the request alone.

Two uses, for every operation alike:
- `reservation`: what a `tpm` limit reserves when it admits a request - the
  prompt's estimate plus the most the answer may use (`max_tokens`,
  `max_completion_tokens` or `max_output_tokens`), as APIM's token limit
  estimates - settled against the real usage once it is known (`app.state`);
- `prompt_tokens`: what a request the client abandoned before Azure's usage
  arrived is recorded with (marked `estimated`), beside the completion chunks
  relayed so far.

The estimate is deliberately simple: every string value of the body (but a
few that are not prompt, like `model`) at four characters a token, an image
or other data URL at a flat cost, a few tokens per object for the framing.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
DATA_URL_TOKENS = 765  # an image given inline: what a 1024x1024 high-detail image costs
PER_OBJECT = 3  # role markers and message framing, about
_NOT_PROMPT = frozenset(
    {
        "model",
        "user",
        "service_tier",
        "previous_response_id",
        "prompt_cache_key",
        "safety_identifier",
        "response_format",
        "reasoning_effort",
    }
)
_MAX_OUTPUT = ("max_completion_tokens", "max_output_tokens", "max_tokens")


def prompt_tokens(data: Any) -> int:
    """About how many tokens the request's prompt is (>= 1 for any non-empty body)."""
    chars = 0
    flat = 0
    stack = [data]
    while stack:  # iterative: a deeply nested body costs no recursion
        node = stack.pop()
        if isinstance(node, str):
            if node.startswith("data:"):
                flat += DATA_URL_TOKENS
            else:
                chars += len(node)
        elif isinstance(node, dict):
            flat += PER_OBJECT
            stack.extend(v for k, v in node.items() if k not in _NOT_PROMPT)
        elif isinstance(node, list):
            stack.extend(node)
    return flat + -(-chars // CHARS_PER_TOKEN)


def max_output(data: Any) -> int:
    """The answer's token cap the request sets, or 0 if it sets none."""
    if isinstance(data, dict):
        for name in _MAX_OUTPUT:
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


def reservation(data: Any) -> int:
    """What `tpm` admission reserves for a request until its usage is known."""
    return prompt_tokens(data) + max_output(data)


def abandoned(data: Any, relayed: int) -> dict[str, int]:
    """The usage of a request whose answer's usage never arrived: the prompt's
    estimate, and the content events relayed so far (about one token each)."""
    return {"prompt_tokens": prompt_tokens(data), "completion_tokens": relayed}
