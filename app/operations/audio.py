"""Audio: transcriptions and translations (multipart uploads) and speech (JSON in, audio out).

Upstream: `app.operations.media.media_url` (v1 `?api-version=preview`, or legacy with at
least 2025-04-01-preview).

- `POST .../audio/transcriptions`, `.../audio/translations`: the upload (`file`, `model`,
  `response_format`, `language`, `prompt`, ...) re-sent with the `model` field set. The
  answer passes through in its own format and content type (json, text, srt, vtt,
  verbose_json); `stream=true` (gpt-4o-transcribe) answers `transcript.text.*` events,
  relayed as they arrive. Counted: whisper's seconds, gpt-4o-transcribe's tokens
  (`app.media_usage.transcription_usage`).
- `POST .../audio/speech`: the JSON body with the deployment as `model`; the audio bytes
  are relayed as they arrive under their content type, and `stream_format: sse` events
  likewise. Counted: the `characters` of `input` (what Azure bills TTS by), plus the
  tokens of a `speech.audio.done` event.
"""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest
from app.media_usage import speech_characters, transcription_usage
from app.operations.base import JSON, Answer, Facts, Parsed
from app.operations.media import AudioScan, FormOperation, MediaOperation, openai_paths


class Transcriptions(FormOperation):
    name = "transcriptions"
    suffix = "/audio/transcriptions"
    paths = openai_paths(suffix)
    answer = Answer.JSON
    files = ("file",)

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        return Facts(transcription_usage(body, content_type))

    def scan(self, parsed: Parsed | None) -> AudioScan:
        return AudioScan()


class Translations(Transcriptions):
    name = "translations"
    suffix = "/audio/translations"
    paths = openai_paths(suffix)


class Speech(MediaOperation):
    name = "speech"
    suffix = "/audio/speech"
    paths = openai_paths(suffix)
    answer = Answer.BYTES

    def parse(self, body: bytes, path_model: str | None, content_type: str = JSON) -> Parsed:
        parsed = super().parse(body, path_model, content_type)
        parsed.stream = True  # audio is relayed as it is made
        parsed.counts = speech_characters(parsed.data)
        return parsed

    def validate(self, data: dict[str, Any]) -> None:
        text = data.get("input")
        if not isinstance(text, str) or not text:
            raise BadRequest("Missing required parameter: 'input'.", param="input")
        voice = data.get("voice")
        if not isinstance(voice, str | dict) or not voice:
            raise BadRequest("Missing required parameter: 'voice'.", param="voice")

    def scan(self, parsed: Parsed | None) -> AudioScan:
        return AudioScan()


TRANSCRIPTIONS = Transcriptions()
TRANSLATIONS = Translations()
SPEECH = Speech()
