"""The simulator's embeddings (app/simulator/embeddings.py), over real HTTP with the openai
SDK and httpx against a `python -m app.simulator` process."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from app.simulator.embeddings import count_tokens, inputs
from tests.conftest import SIM_KEYS, Sim

KEY = SIM_KEYS[0]
AUTH = {"api-key": KEY}
MODEL = "text-embedding-3-small"
V1 = "/openai/v1/embeddings"
LEGACY = "/openai/deployments/{}/embeddings?api-version=2024-10-21"


Clients = Callable[[Sim], openai.OpenAI]


@pytest.fixture
def regions(sims: dict[str, Sim]) -> dict[str, Sim]:
    """The two session simulators (``eastus``, ``sweden``), reset."""
    for s in sims.values():
        s.reset()
    return sims


@pytest.fixture(scope="module")
def oai() -> Iterator[Clients]:
    """An openai client per resource, closed at the end of the module."""
    made: dict[str, openai.OpenAI] = {}

    def get(sim: Sim) -> openai.OpenAI:
        if sim.url not in made:
            base = f"{sim.url}/openai/v1"
            made[sim.url] = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
        return made[sim.url]

    yield get
    for c in made.values():
        c.close()


def post(sim: Sim, body: dict[str, Any], path: str = V1) -> httpx.Response:
    return httpx.post(sim.url + path, headers=AUTH, json=body)


def test_sdk_default_is_base64_and_decodes_to_the_float_answer(
    regions: dict[str, Sim], oai: Clients
) -> None:
    east = regions["eastus"]
    got = oai(east).embeddings.create(model=MODEL, input=["hello world", "again"])
    assert [d.index for d in got.data] == [0, 1]
    assert all(len(d.embedding) == 1536 for d in got.data)
    assert got.usage.prompt_tokens == got.usage.total_tokens == 3
    assert got.model == MODEL
    # what went over the wire was base64, as the SDK asks by default
    [sent] = [r["body"] for r in east.requests()]
    assert sent["encoding_format"] == "base64"
    floats = post(east, {"model": MODEL, "input": ["hello world", "again"]}).json()
    assert [d["embedding"] for d in floats["data"]] == [d.embedding for d in got.data]


def test_base64_is_little_endian_float32_of_a_unit_vector(regions: dict[str, Sim]) -> None:
    body = post(
        regions["eastus"], {"model": MODEL, "input": "x", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(values) == 1536
    assert math.isclose(math.sqrt(sum(v * v for v in values)), 1.0, rel_tol=1e-5)


def test_deterministic_across_resources_and_dimensions(
    regions: dict[str, Sim], oai: Clients
) -> None:
    a = post(regions["eastus"], {"model": MODEL, "input": "same text"}).json()["data"][0]
    b = post(regions["sweden"], {"model": MODEL, "input": "same text"}).json()["data"][0]
    c = post(regions["eastus"], {"model": MODEL, "input": "other text"}).json()["data"][0]
    assert a["embedding"] == b["embedding"] != c["embedding"]
    small = oai(regions["eastus"]).embeddings.create(model=MODEL, input="same text", dimensions=64)
    assert len(small.data[0].embedding) == 64


def test_token_inputs_and_legacy_route(regions: dict[str, Sim]) -> None:
    r = post(regions["eastus"], {"input": [[1, 2, 3], [4]]}, LEGACY.format(MODEL))
    assert r.status_code == 200
    assert r.json()["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert len(r.json()["data"]) == 2
    r = post(regions["eastus"], {"input": [5, 6]}, LEGACY.format(MODEL))
    assert r.json()["usage"]["prompt_tokens"] == 2 and len(r.json()["data"]) == 1
    assert post(regions["eastus"], {"input": "x"}, LEGACY.format("nope")).status_code == 404
    no_version = f"/openai/deployments/{MODEL}/embeddings"
    assert post(regions["eastus"], {"input": "x"}, no_version).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 5000}, "dimensions"),
    ],
)
def test_invalid_requests_400(regions: dict[str, Sim], body: dict[str, Any], param: str) -> None:
    r = post(regions["eastus"], {"model": MODEL, **body})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_chat_models_do_not_embed_and_embedding_models_do_not_chat(regions: dict[str, Sim]) -> None:
    r = post(regions["eastus"], {"model": "gpt-4o", "input": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "OperationNotSupported"
    assert "embeddings operation does not work" in r.json()["error"]["message"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    r = post(regions["eastus"], chat, "/openai/v1/chat/completions")
    assert r.status_code == 400
    assert "chatCompletion operation does not work" in r.json()["error"]["message"]


def test_faults_apply_to_embeddings(regions: dict[str, Sim]) -> None:
    east = regions["eastus"]
    east.fault("429", count=1, retry_after=3)
    r = post(east, {"model": MODEL, "input": "x"})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert "Embeddings_Create" in r.json()["error"]["message"]
    east.fault("drop", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        post(east, {"model": MODEL, "input": "x"})
    east.revoke(KEY)
    assert post(east, {"model": MODEL, "input": "x"}).status_code == 401


def test_pure_input_helpers() -> None:
    assert inputs("a") == ["a"]
    assert inputs([1, 2]) == [[1, 2]]
    assert inputs(["a", [1]]) == ["a", [1]]
    assert inputs([]) is None
    assert inputs([True]) is None
    assert count_tokens(["a b c", "", [1, 2]]) == 3 + 1 + 2
