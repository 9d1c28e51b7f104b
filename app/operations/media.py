"""What images and audio operations share: the upstream URL form, uploads, audio events.

The upstream form, one decision for every images and audio operation (`media_url`):

    v1 resource      {endpoint}/openai/v1{suffix}?api-version=preview, deployment in `model`
                     (Azure keeps images and audio in preview on v1)
    legacy resource  {endpoint}/openai/deployments/{deployment}{suffix}?api-version=V, where V
                     is the resource's `api_version` unless it is older than
                     MEDIA_API_VERSION (2025-04-01-preview: gpt-image-1, gpt-4o-transcribe
                     and gpt-4o-mini-tts need it), which is then used instead

`FormOperation` is an operation whose request is a multipart upload (image edits,
transcriptions, translations): parsed once by `app.multipart`, re-sent to every
candidate with the deployment as its `model` field (v1 reads it; legacy routes take it
too, as the AzureOpenAI SDKs send it). `AudioScan` relays an audio event stream
(`transcript.text.*`, `speech.audio.*`) and reads the usage of its final event.
"""

from __future__ import annotations

from typing import Any

from app import relay
from app.errors import BadRequest
from app.media_usage import event_usage
from app.multipart import read_form, with_model
from app.operations.base import JSON, Operation, Parsed, Place
from app.operations.responses import EventScan, event_type
from app.upstream import Body

MEDIA_API_VERSION = "2025-04-01-preview"
V1_PREVIEW = "preview"
FINAL_EVENTS = frozenset({b"transcript.text.done", b"speech.audio.done"})


def legacy_version(resource_version: str) -> str:
    """The resource's api-version, or MEDIA_API_VERSION when the resource's is older."""
    if resource_version[:10] >= MEDIA_API_VERSION[:10]:
        return resource_version
    return MEDIA_API_VERSION


def media_url(place: Place, suffix: str) -> str:
    """The upstream URL of an images or audio operation at ``suffix`` (``/audio/speech``)."""
    if place.api == "v1":
        return f"{place.base}/openai/v1{suffix}?api-version={V1_PREVIEW}"
    return (
        f"{place.base}/openai/deployments/{place.deployment}{suffix}"
        f"?api-version={legacy_version(place.api_version)}"
    )


def openai_paths(suffix: str) -> frozenset[str]:
    """The OpenAI-shaped routes of an operation (``/v1{suffix}`` and its aliases)."""
    return frozenset({"/v1" + suffix, suffix, "/openai/v1" + suffix, "/openai" + suffix})


class MediaOperation(Operation):
    """An images or audio operation: URL by `media_url`."""

    def url(self, place: Place) -> str:
        return media_url(place, self.suffix)


class FormOperation(MediaOperation):
    """An operation whose request is a multipart upload with a ``model`` field."""

    files: tuple[str, ...] = ()  # a file part one of these names must be present

    def parse(self, body: bytes, path_model: str | None, content_type: str = JSON) -> Parsed:
        form = read_form(body, content_type)
        model = path_model or form.fields.get("model")
        if not model:
            raise BadRequest("Missing required parameter: 'model'.", param="model")
        if self.files and not any(name in self.files for name in form.files):
            raise BadRequest(
                f"Missing required parameter: '{self.files[0]}' (a file part).",
                param=self.files[0],
            )
        data: dict[str, Any] = dict(form.fields)
        self.validate(data)
        return Parsed(
            model=model,
            stream=self.streams(data),
            data=data,
            content_type=form.content_type,
            form=form,
        )

    def streams(self, data: dict[str, Any]) -> bool:
        """Whether the answer is an event stream (``stream=true`` in the form)."""
        return str(data.get("stream", "")).lower() == "true"

    def rewrite(self, parsed: Parsed, deployment: str, reasoning: bool) -> Body:
        # Both URL forms take a `model` field naming the deployment (the AzureOpenAI
        # SDKs send one on legacy routes too): the upload as is, or its pieces around
        # the new value (written one after the other, never joined into a copy).
        assert parsed.form is not None
        return with_model(parsed.form, deployment, add=True)


class AudioScan(EventScan):
    """Relays ``transcript.text.*`` / ``speech.audio.*`` events; counts the final one."""

    __slots__ = ("counted",)

    def __init__(self) -> None:
        super().__init__()
        self.counted: dict[str, int] = {}

    def tokens(self) -> dict[str, int]:
        return self.counted

    def broken(self, message: str) -> bytes:
        return relay.error_event(message)

    def _wanted(self, head: bytes) -> bool:
        return event_type(head) in FINAL_EVENTS

    def _read(self, event: bytes) -> None:
        payload = b"\n".join(
            ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")
        )
        self.counted = event_usage(payload)
        self.done = True
