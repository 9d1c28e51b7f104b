"""What an operation is: the contract every module in `app.operations` fills in.

An operation (chat completions, Responses, embeddings, ...) is data for the
generic path in `app.handler`, which never names one:

- its routes: the exact paths a create is POSTed to, and the suffix of the
  Azure-shaped `/openai/deployments/{model}{suffix}` form;
- where the model name is (`parse`: the JSON body's `model` by default);
- its upstream URL for a v1 and a legacy resource (`url`);
- its body rewrite for one deployment (`rewrite`);
- the kind of answer it returns (`answer`) and, for a stream, the scanner that
  relays it (`scan`);
- how usage (and a stored response's id) is read from a whole body (`facts`).

A new operation is one module with a subclass of `Operation` and an entry in
`app.operations.OPERATIONS`. Operations whose request is not JSON (multipart
image edits, audio) override `parse` (it gets the caller's content type), keep
the raw body in `Parsed.body` and set `Parsed.content_type`, which the upstream
call is sent with; `rewrite` gives the bytes for one deployment. Answers that
are bytes rather than JSON use `Answer.BYTES`; `facts` gets the answer's content
type, so it can read usage from whatever the answer is. A multipart operation
keeps its upload in `Parsed.form`; what is counted from the request rather than
the answer (speech characters) goes in `Parsed.counts`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from app.errors import BadRequest
from app.jsonbody import load_object
from app.multipart import Form
from app.upstream import Body

JSON = "application/json"


class Answer(enum.Enum):
    JSON = "json"  # one JSON body
    CHAT_SSE = "chat-sse"  # `data:` chunks ending with `data: [DONE]`
    EVENTS = "events"  # Responses event stream: `event:`/`data:`, ends with a terminal event
    BYTES = "bytes"  # audio or images as bytes: relayed as they are, no usage read


@dataclass(frozen=True, slots=True)
class Place:
    """Where one deployment lives: what an upstream URL is built from."""

    base: str  # the resource's normalized endpoint, https://x.openai.azure.com
    api: str  # "v1" or "legacy"
    deployment: str
    api_version: str  # legacy chat/embeddings version
    responses_api_version: str  # legacy Responses version


@dataclass(slots=True)
class Parsed:
    """A create request, parsed once."""

    model: str
    stream: bool
    data: dict[str, Any]  # the JSON body (a multipart operation puts its fields here)
    body: bytes = b""  # the raw body, for operations that forward it unchanged
    content_type: str = "application/json"  # what the upstream is sent (a multipart boundary)
    form: Form | None = None  # a multipart upload (app.multipart), kept for every attempt
    counts: dict[str, int] = field(default_factory=dict)  # usage counted from the request


@dataclass(slots=True)
class Facts:
    """What the gateway reads from an answer: token counts, a stored response's id."""

    tokens: dict[str, int] = field(default_factory=dict)
    response_id: str | None = None
    model: str | None = None  # the model Azure says answered (for pricing)


class Scan(Protocol):
    """Relays one upstream stream: returns the bytes to forward, notes what it needs."""

    done: bool  # the stream reached its end ([DONE], a terminal event): later reads are drained

    @property
    def response_id(self) -> str | None:
        """A stored response's id, once the stream has told it."""
        ...

    @property
    def model(self) -> str | None:
        """The model Azure says answered, once the stream has told it (for pricing)."""
        ...

    def feed(self, data: bytes) -> bytes: ...
    def close(self) -> bytes: ...
    def tokens(self) -> dict[str, int]: ...
    def relayed(self) -> int:
        """Content events passed on so far (about one token each): what an abandoned
        stream's completion is estimated from when its usage never arrives."""
        ...

    def broken(self, message: str) -> bytes:
        """The terminal failure event(s) for a stream cut short upstream."""
        ...


class Operation:
    name = ""  # the `api` metrics label and the key of `Target.urls`
    paths: frozenset[str] = frozenset()  # POST here with the model in the body
    suffix = ""  # /openai/deployments/{model}{suffix}
    answer = Answer.JSON  # what a create returns unless streamed

    def url(self, place: Place) -> str:
        raise NotImplementedError

    def parse(self, body: bytes, path_model: str | None, content_type: str = JSON) -> Parsed:
        """The request, parsed once; `content_type` is the caller's (multipart has a boundary)."""
        data = json_object(body)
        model = path_model or data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("Missing required parameter: 'model'.", param="model")
        self.validate(data)
        return Parsed(model=model, stream=data.get("stream") is True, data=data)

    def validate(self, data: dict[str, Any]) -> None:
        """Raise `BadRequest` for a body this operation cannot send upstream."""

    def rewrite(self, parsed: Parsed, deployment: str, reasoning: bool) -> Body:
        out = dict(parsed.data)
        out["model"] = deployment
        return orjson.dumps(out)

    def facts(self, body: bytes, content_type: str = JSON) -> Facts:
        """Usage (and a stored response's id) of a whole 200 answer of this content type."""
        return Facts()

    def scan(self, parsed: Parsed | None) -> Scan:
        raise NotImplementedError(f"{self.name} answers are not streamed")

    def stored_id(self, parsed: Parsed) -> str | None:
        """The stored response a create continues (`previous_response_id`), if any."""
        return None

    def stores(self, parsed: Parsed) -> bool:
        """Whether a create's answer is kept upstream (and so remembered here)."""
        return False


def json_object(body: bytes) -> dict[str, Any]:
    """The caller's JSON object, or a 400 (`app.jsonbody`)."""
    return load_object(body)


def answer_model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def body_json(body: bytes) -> dict[str, Any] | None:
    """A whole answer as a dict, or None when it is not a JSON object."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def counts(found: dict[str, Any]) -> dict[str, int]:
    """Keep the non-negative integers: the usage table's fields."""
    return {
        name: value
        for name, value in found.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    }


def detail(usage: dict[str, Any], details: str, name: str) -> Any:
    value = usage.get(details)
    return value.get(name) if isinstance(value, dict) else None
