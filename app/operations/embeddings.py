"""Embeddings: `POST .../embeddings`.

Upstream: `{endpoint}/openai/v1/embeddings` (deployment in `model`) or, on a
legacy resource, `/openai/deployments/{deployment}/embeddings?api-version=...`.
The body is passed on with the deployment as `model` (the openai SDKs ask for
`encoding_format: base64` by default; Azure answers it as asked). The answer
is JSON; usage is `prompt_tokens`.
"""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest
from app.operations.base import (
    JSON,
    Answer,
    Facts,
    Operation,
    Parsed,
    Place,
    answer_model,
    body_json,
    counts,
)


class Embeddings(Operation):
    name = "embeddings"
    paths = frozenset(
        {"/v1/embeddings", "/embeddings", "/openai/v1/embeddings", "/openai/embeddings"}
    )
    suffix = "/embeddings"
    answer = Answer.JSON

    def url(self, place: Place) -> str:
        if place.api == "v1":
            return f"{place.base}/openai/v1/embeddings"
        return (
            f"{place.base}/openai/deployments/{place.deployment}/embeddings"
            f"?api-version={place.api_version}"
        )

    def parse(self, body: bytes, path_model: str | None, content_type: str = JSON) -> Parsed:
        parsed = super().parse(body, path_model, content_type)
        parsed.stream = False  # embeddings are never streamed
        return parsed

    def validate(self, data: dict[str, Any]) -> None:
        value = data.get("input")
        if not isinstance(value, str | list) or not value:
            raise BadRequest(
                "Missing required parameter: 'input' (a string or a non-empty array).",
                param="input",
            )

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        data = body_json(body)
        usage = data.get("usage") if data is not None else None
        if data is None or not isinstance(usage, dict):
            return Facts()
        return Facts(
            counts({"prompt_tokens": usage.get("prompt_tokens")}), model=answer_model(data)
        )


EMBEDDINGS = Embeddings()
