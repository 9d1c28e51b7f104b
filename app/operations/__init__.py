"""The operations the gateway relays, and which one a request path asks for.

    chat        POST .../chat/completions                 app.operations.chat
    responses   POST .../responses, /responses/{id}[...]  app.operations.responses
    embeddings  POST .../embeddings                       app.operations.embeddings
    images      POST .../images/generations               app.operations.images
    images_edits  POST .../images/edits (multipart)       app.operations.images
    transcriptions  POST .../audio/transcriptions (multipart)  app.operations.audio
    translations    POST .../audio/translations (multipart)    app.operations.audio
    speech      POST .../audio/speech                     app.operations.audio

`route()` is the whole path decision, a set lookup for the common case. A new
operation is one module (a subclass of `base.Operation`) and one entry in
`OPERATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.operations.audio import SPEECH, TRANSCRIPTIONS, TRANSLATIONS
from app.operations.base import Answer, Facts, Operation, Parsed, Place, Scan
from app.operations.chat import CHAT
from app.operations.embeddings import EMBEDDINGS
from app.operations.images import EDITS, GENERATIONS
from app.operations.responses import RESPONSES, STORED_METHODS, stored_route

__all__ = [
    "OPERATIONS",
    "Answer",
    "Facts",
    "Operation",
    "Parsed",
    "Place",
    "Route",
    "Scan",
    "route",
]

OPERATIONS: tuple[Operation, ...] = (
    CHAT,
    RESPONSES,
    EMBEDDINGS,
    GENERATIONS,
    EDITS,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    SPEECH,
)

_BY_PATH = {path: op for op in OPERATIONS for path in op.paths}
_DEPLOYMENTS = "/openai/deployments/"


@dataclass(frozen=True, slots=True)
class Route:
    """What a request asks for: an operation, and a model or a stored response."""

    op: Operation
    methods: tuple[str, ...] = ("POST",)
    model: str | None = None  # named in the path (`/openai/deployments/{model}/...`)
    response_id: str | None = None  # a stored response named in the path
    tail: str = ""  # after `/responses/{id}`: "", "/input_items", "/cancel"


_CREATE = {op: Route(op) for op in OPERATIONS}


def route(path: str) -> Route | None:
    """The route of a normalized path (no trailing slash), or None: not ours."""
    op = _BY_PATH.get(path)
    if op is not None:
        return _CREATE[op]
    if path.startswith(_DEPLOYMENTS):
        for op in OPERATIONS:
            if path.endswith(op.suffix):
                name = path[len(_DEPLOYMENTS) : -len(op.suffix)]
                if name and "/" not in name:
                    return Route(op, model=name)
                return None
        return None
    stored = stored_route(path)
    if stored is not None:
        rid, tail = stored
        return Route(RESPONSES, STORED_METHODS[tail], response_id=rid, tail=tail)
    return None
