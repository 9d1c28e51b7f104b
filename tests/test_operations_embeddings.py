"""app/operations/embeddings.py: URL per resource form, body, usage."""

from __future__ import annotations

import orjson
import pytest

from app.errors import BadRequest
from app.operations import Place
from app.operations.embeddings import EMBEDDINGS


def place(api: str) -> Place:
    return Place("https://x.openai.azure.com", api, "emb-dep", "2024-10-21", "2025-04-01-preview")


def test_urls() -> None:
    assert EMBEDDINGS.url(place("v1")) == "https://x.openai.azure.com/openai/v1/embeddings"
    assert EMBEDDINGS.url(place("legacy")) == (
        "https://x.openai.azure.com/openai/deployments/emb-dep/embeddings?api-version=2024-10-21"
    )


def test_body_keeps_the_encoding_and_names_the_deployment() -> None:
    parsed = EMBEDDINGS.parse(
        b'{"model": "emb", "input": ["a", "b"], "encoding_format": "base64", "stream": true}',
        None,
    )
    assert parsed.model == "emb"
    assert parsed.stream is False  # embeddings are never streamed
    out = orjson.loads(EMBEDDINGS.rewrite(parsed, "emb-dep", False))
    assert out == {
        "model": "emb-dep",
        "input": ["a", "b"],
        "encoding_format": "base64",
        "stream": True,
    }


@pytest.mark.parametrize("body", [b'{"model": "e"}', b'{"model": "e", "input": []}'])
def test_input_is_required(body: bytes) -> None:
    with pytest.raises(BadRequest) as err:
        EMBEDDINGS.parse(body, None)
    assert err.value.param == "input"


def test_usage() -> None:
    body = orjson.dumps({"data": [], "usage": {"prompt_tokens": 7, "total_tokens": 7}})
    assert EMBEDDINGS.facts(body).tokens == {"prompt_tokens": 7}
    assert EMBEDDINGS.facts(b"[]").tokens == {}
