"""Images: `POST .../images/generations` (JSON) and `.../images/edits` (multipart).

Upstream: `app.operations.media.media_url` (v1 `?api-version=preview`, or legacy with at
least 2025-04-01-preview). Generations pass the JSON body on with the deployment as
`model`; edits re-send the upload (`image`/`image[]` files, optional `mask`, `prompt`)
with the `model` field set. The answer is JSON, relayed whole - also when the caller
asked gpt-image-1 for partial images (`stream: true`): the events then arrive together
at the end. Counted: gpt-image token usage (`input_tokens` -> prompt_tokens,
`output_tokens` -> completion_tokens) and `images`, the number of images returned.
"""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest
from app.media_usage import image_usage
from app.operations.base import JSON, Answer, Facts, Parsed
from app.operations.media import FormOperation, MediaOperation, openai_paths


def require_prompt(data: dict[str, Any]) -> None:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("Missing required parameter: 'prompt'.", param="prompt")


class ImageGenerations(MediaOperation):
    name = "images"
    suffix = "/images/generations"
    paths = openai_paths(suffix)
    answer = Answer.JSON

    def parse(self, body: bytes, path_model: str | None, content_type: str = JSON) -> Parsed:
        parsed = super().parse(body, path_model, content_type)
        parsed.stream = False  # partial-image events are relayed whole
        return parsed

    def validate(self, data: dict[str, Any]) -> None:
        require_prompt(data)

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        return Facts(image_usage(body))


class ImageEdits(FormOperation):
    name = "images_edits"
    suffix = "/images/edits"
    paths = openai_paths(suffix)
    answer = Answer.JSON
    files = ("image", "image[]")

    def validate(self, data: dict[str, Any]) -> None:
        require_prompt(data)

    def streams(self, data: dict[str, Any]) -> bool:
        return False  # partial-image events are relayed whole

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        return Facts(image_usage(body))


GENERATIONS = ImageGenerations()
EDITS = ImageEdits()
