"""app/operations: which operation (and model or stored response) a path asks for."""

from __future__ import annotations

import pytest

from app.operations import OPERATIONS, route
from app.operations.chat import CHAT
from app.operations.embeddings import EMBEDDINGS
from app.operations.responses import RESPONSES


@pytest.mark.parametrize(
    ("path", "op", "model"),
    [
        ("/v1/chat/completions", CHAT, None),
        ("/chat/completions", CHAT, None),
        ("/openai/v1/chat/completions", CHAT, None),
        ("/openai/chat/completions", CHAT, None),
        ("/openai/deployments/gpt-4o/chat/completions", CHAT, "gpt-4o"),
        ("/v1/responses", RESPONSES, None),
        ("/responses", RESPONSES, None),
        ("/openai/v1/responses", RESPONSES, None),
        ("/openai/responses", RESPONSES, None),
        ("/openai/deployments/gpt-4o/responses", RESPONSES, "gpt-4o"),
        ("/v1/embeddings", EMBEDDINGS, None),
        ("/embeddings", EMBEDDINGS, None),
        ("/openai/v1/embeddings", EMBEDDINGS, None),
        ("/openai/deployments/emb/embeddings", EMBEDDINGS, "emb"),
    ],
)
def test_create_routes(path: str, op: object, model: str | None) -> None:
    found = route(path)
    assert found is not None
    assert (found.op, found.model, found.response_id, found.methods) == (op, model, None, ("POST",))


@pytest.mark.parametrize("prefix", ["/v1", "", "/openai/v1", "/openai"])
@pytest.mark.parametrize(
    ("tail", "methods"),
    [("", ("GET", "DELETE")), ("/input_items", ("GET",)), ("/cancel", ("POST",))],
)
def test_stored_response_routes(prefix: str, tail: str, methods: tuple[str, ...]) -> None:
    found = route(f"{prefix}/responses/resp_abc-123{tail}")
    assert found is not None
    assert (found.op, found.response_id, found.tail, found.methods) == (
        RESPONSES,
        "resp_abc-123",
        tail,
        methods,
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",
        "/v1/completions",
        "/openai/deployments//chat/completions",
        "/openai/deployments/a/b/chat/completions",
        "/v1/responses/resp_1/other",
        "/v1/responses/bad%2Fid",
        "/v1/responses/has.dot",
        "/status",
    ],
)
def test_other_paths_are_not_operations(path: str) -> None:
    assert route(path) is None


def test_operation_names_are_the_metrics_api_labels() -> None:
    names = [op.name for op in OPERATIONS]
    assert names[:3] == ["chat", "responses", "embeddings"]
    assert len(set(names)) == len(names)  # one label (and one Target.urls entry) each
