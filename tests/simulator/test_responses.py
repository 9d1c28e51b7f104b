"""The simulator's Responses API (app/simulator/responses.py, responses_wire.py, store.py),
over real HTTP: the openai SDK and raw httpx against `python -m app.simulator` processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from app.simulator import REASONING_TOKENS
from tests.conftest import SIM_KEYS, Sim, start_sim, stop

KEY = SIM_KEYS[0]
AUTH = {"api-key": KEY}
V1 = "/openai/v1/responses"
LEGACY = "/openai/responses?api-version=2025-04-01-preview"
ENCRYPTED = "reasoning.encrypted_content"
UNSUPPORTED = "unsupported_parameter"
EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 8,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


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


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(``event:`` name, parsed ``data:``) pairs; asserts every event has both lines."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        out.append((lines[0][7:], orjson.loads(lines[1][6:])))
    return out


@pytest.fixture(scope="module")
def slow() -> Iterator[Sim]:
    """A resource whose text deltas come 0.2 s apart: background work stays in progress for
    about 1.4 s, long enough to cancel it or resume its stream even on a loaded machine."""
    s = start_sim("slow", "--chunk-delay", "0.2")
    yield s
    stop(s.proc)


# --- create ----------------------------------------------------------------------------------


def test_create_plain_shape_and_usage(regions: dict[str, Sim], oai: Clients) -> None:
    east = regions["eastus"]
    r = oai(east).responses.with_raw_response.create(
        model="gpt-4o", input="hello there world", instructions="be brief"
    )
    assert r.headers["x-ms-region"] == "eastus"
    resp = r.parse()
    assert resp.id.startswith("resp_") and len(resp.id) == 55
    assert resp.object == "response" and resp.status == "completed"
    assert resp.model == "gpt-4o-2024-11-20"
    assert resp.output_text == "You said: hello there world"
    [message] = resp.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert resp.usage is not None
    # (3 words + 3) for the input, (2 + 3) for the instructions; 5 words answered
    assert resp.usage.input_tokens == 11
    assert resp.usage.output_tokens == 5
    assert resp.usage.total_tokens == 16
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.store is True
    assert east.stats()["by_deployment"] == {"gpt-4o": 1}


def test_stream_event_sequence(regions: dict[str, Sim]) -> None:
    body = {"model": "gpt-4o", "input": [{"role": "user", "content": "one two"}], "stream": True}
    r = httpx.post(regions["eastus"].url + V1, headers=AUTH, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    events = sse(r.text)
    assert [name for name, _ in events] == EVENTS
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(EVENTS)))
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["usage"] is None
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == "You said: one two" == events[-4][1]["text"]
    assert completed["output"][0]["content"][0]["text"] == text
    assert completed["usage"]["input_tokens"] == 5
    assert completed["usage"]["output_tokens"] == 4
    assert "[DONE]" not in r.text


def test_sdk_stream_helper_on_a_reasoning_deployment(regions: dict[str, Sim], oai: Clients) -> None:
    with oai(regions["eastus"]).responses.stream(
        model="o3-mini", input="think", include=[ENCRYPTED]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.encrypted_content
    assert message.type == "message"
    assert final.output_text == "You said: think"
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    assert final.usage.output_tokens == 3 + REASONING_TOKENS


def test_max_output_tokens_makes_it_incomplete(regions: dict[str, Sim], oai: Clients) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    resp = oai(regions["eastus"]).responses.create(
        model="gpt-4o", input=words, max_output_tokens=16
    )
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert len(resp.output_text.split()) == 16


@pytest.mark.parametrize(
    ("model", "extra", "param", "code"),
    [
        ("o3-mini", {"temperature": 0.2}, "temperature", UNSUPPORTED),
        ("o3-mini", {"top_p": 0.5}, "top_p", UNSUPPORTED),
        ("gpt-4o", {"reasoning": {"effort": "high"}}, "reasoning.effort", UNSUPPORTED),
        ("gpt-4o", {"reasoning": {"summary": "auto"}}, "reasoning.summary", UNSUPPORTED),
        ("gpt-4o", {"include": [ENCRYPTED]}, "include", UNSUPPORTED),
        ("gpt-4o", {"max_output_tokens": 8}, "max_output_tokens", "integer_below_min_value"),
        ("gpt-4o", {"input": 3}, "input", "invalid_type"),
    ],
)
def test_invalid_parameters_400(
    regions: dict[str, Sim], model: str, extra: dict[str, Any], param: str, code: str
) -> None:
    body = {"model": model, "input": "hi", **extra}
    r = httpx.post(regions["eastus"].url + V1, headers=AUTH, json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_reasoning_deployment_takes_reasoning_and_gpt_4o_takes_temperature(
    regions: dict[str, Sim],
    oai: Clients,
) -> None:
    c = oai(regions["eastus"])
    assert c.responses.create(model="o3-mini", input="x", reasoning={"effort": "low"}).reasoning
    assert c.responses.create(model="gpt-4o", input="x", temperature=0.2).temperature == 0.2


def test_messages_and_wrong_operation_and_missing_model(regions: dict[str, Sim]) -> None:
    url = regions["eastus"].url + V1
    r = httpx.post(url, headers=AUTH, json={"model": "gpt-4o", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"
    assert "moved to 'input'" in r.json()["error"]["message"]
    r = httpx.post(url, headers=AUTH, json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "OperationNotSupported"
    r = httpx.post(url, headers=AUTH, json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "DeploymentNotFound"
    r = httpx.post(url, headers=AUTH, json={"input": "x"})
    assert r.status_code == 400


# --- stored per resource ---------------------------------------------------------------------


def test_previous_response_chain_is_per_resource(regions: dict[str, Sim], oai: Clients) -> None:
    east = oai(regions["eastus"])
    first = east.responses.create(model="gpt-4o", input="first turn")
    second = east.responses.create(model="gpt-4o", input="next", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens_details.cached_tokens == first.usage.total_tokens
    assert second.usage.input_tokens == first.usage.total_tokens + 4
    # the other resource never saw it: Azure's 400, exactly
    r = httpx.post(
        regions["sweden"].url + V1,
        headers=AUTH,
        json={"model": "gpt-4o", "input": "next", "previous_response_id": first.id},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": f"Previous response with id '{first.id}' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }
    with pytest.raises(openai.NotFoundError):
        oai(regions["sweden"]).responses.retrieve(first.id)


def test_retrieve_input_items_delete(regions: dict[str, Sim], oai: Clients) -> None:
    c = oai(regions["eastus"])
    items = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
    ]
    made = c.responses.create(model="gpt-4o", input=items)  # type: ignore[arg-type]
    got = c.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text == "You said: three"
    listed = c.responses.input_items.list(made.id)
    texts = [i.content[0].text for i in listed.data]  # type: ignore[union-attr]
    assert texts == ["three", "two", "one"]  # newest first, as the API lists them
    asc = c.responses.input_items.list(made.id, order="asc", limit=2)
    assert [i.content[0].text for i in asc.data] == ["one", "two"]  # type: ignore[union-attr]
    assert asc.has_more is True
    c.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError) as err:
        c.responses.retrieve(made.id)
    assert err.value.body == {  # the SDK hands over the "error" object
        "message": f"Response with id '{made.id}' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(made.id)


def test_store_false_keeps_nothing(regions: dict[str, Sim], oai: Clients) -> None:
    c = oai(regions["eastus"])
    made = c.responses.create(model="gpt-4o", input="secret", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(made.id)
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="gpt-4o", input="more", previous_response_id=made.id)
    assert err.value.code == "previous_response_not_found"


def test_reset_forgets_stored_responses(regions: dict[str, Sim], oai: Clients) -> None:
    c = oai(regions["eastus"])
    made = c.responses.create(model="gpt-4o", input="x")
    regions["eastus"].reset()
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(made.id)


# --- legacy routes ---------------------------------------------------------------------------


def test_legacy_routes_and_api_version_floor(regions: dict[str, Sim]) -> None:
    url = regions["eastus"].url
    body = {"model": "gpt-4o", "input": "x"}
    r = httpx.post(url + LEGACY, headers=AUTH, json=body)
    assert r.status_code == 200
    rid = r.json()["id"]
    for version in ("2024-10-21", "2025-01-01-preview"):
        old = httpx.post(url + f"/openai/responses?api-version={version}", headers=AUTH, json=body)
        assert old.status_code == 400
        assert old.json()["error"]["message"] == (
            "Azure OpenAI Responses API is enabled only for api-version 2025-03-01-preview"
            " and later"
        )
    assert httpx.post(url + "/openai/responses", headers=AUTH, json=body).status_code == 404
    q = "?api-version=2025-04-01-preview"
    assert httpx.get(f"{url}/openai/responses/{rid}{q}", headers=AUTH).json()["id"] == rid
    items = httpx.get(f"{url}/openai/responses/{rid}/input_items{q}", headers=AUTH)
    assert items.json()["object"] == "list"
    deleted = httpx.delete(f"{url}/openai/responses/{rid}{q}", headers=AUTH)
    assert deleted.json() == {"id": rid, "object": "response", "deleted": True}
    assert httpx.get(f"{url}/openai/responses/{rid}{q}", headers=AUTH).status_code == 404
    # unknown sub-routes are Azure's plain 404
    assert httpx.get(f"{url}/openai/v1/responses/{rid}/other", headers=AUTH).status_code == 404


# --- faults ----------------------------------------------------------------------------------


def test_faults_apply_to_responses(regions: dict[str, Sim]) -> None:
    east = regions["eastus"]
    url = east.url + V1
    body = {"model": "gpt-4o", "input": "x"}
    east.fault("429", count=1, retry_after_ms=1500)
    r = httpx.post(url, headers=AUTH, json=body)
    assert r.status_code == 429
    assert r.headers["retry-after-ms"] == "1500" and r.headers["retry-after"] == "2"
    assert "Responses_Create" in r.json()["error"]["message"]
    east.fault("500", count=1)
    assert httpx.post(url, headers=AUTH, json=body).status_code == 500
    east.revoke(KEY)
    assert httpx.post(url, headers=AUTH, json=body).status_code == 401
    assert httpx.post(url, headers={"api-key": SIM_KEYS[1]}, json=body).status_code == 200


def test_deployment_scoped_fault_reaches_routes_by_id(
    regions: dict[str, Sim], oai: Clients
) -> None:
    east = regions["eastus"]
    made = oai(east).responses.create(model="gpt-4o-mini", input="x")
    east.fault("500", deployment="gpt-4o", count=1)  # another deployment: not this one
    east.fault("500", deployment="gpt-4o-mini", count=1)
    r = httpx.get(f"{east.url}{V1}/{made.id}", headers=AUTH)
    assert r.status_code == 500
    assert east.stats()["by_deployment"]["gpt-4o-mini"] == 2


def test_hang_until_the_client_gives_up(regions: dict[str, Sim]) -> None:
    east = regions["eastus"]
    east.fault("hang", count=1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(east.url + V1, headers=AUTH, json={"model": "gpt-4o", "input": "x"}, timeout=0.3)
    deadline = time.monotonic() + 5
    while east.stats()["disconnects"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert east.stats()["disconnects"] == 1


def test_drop_cuts_the_stream_after_n_deltas(regions: dict[str, Sim]) -> None:
    east = regions["eastus"]
    east.fault("drop", count=1, after_chunks=3)
    body = {"model": "gpt-4o", "input": "a few words here", "stream": True}
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", east.url + V1, headers=AUTH, json=body) as r,
    ):
        lines.extend(r.iter_lines())
    text = "\n".join(lines)
    assert "event: response.created" in text
    assert text.count("event: response.output_text.delta") == 3
    assert "response.completed" not in text


# --- background ------------------------------------------------------------------------------


def test_background_create_poll_and_resume(slow: Sim, oai: Clients) -> None:
    slow.reset()
    c = oai(slow)
    made = c.responses.create(model="gpt-4o", input="six words in this input", background=True)
    assert made.status == "queued" and made.background is True
    resumed = list(c.responses.retrieve(made.id, stream=True, starting_after=4))
    numbers = [e.sequence_number for e in resumed]
    assert numbers == list(range(5, 5 + len(numbers)))
    assert resumed[-1].type == "response.completed"
    assert c.responses.retrieve(made.id).status == "completed"
    # a finished background response cancels to itself
    assert c.responses.cancel(made.id).status == "completed"


def test_background_stream_dropped_then_resumed(slow: Sim, oai: Clients) -> None:
    slow.reset()
    slow.fault("drop", count=1, after_chunks=2)
    body = {"model": "gpt-4o", "input": "resume me please", "stream": True, "background": True}
    seen: list[dict[str, Any]] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", slow.url + V1, headers=AUTH, json=body) as r,
    ):
        seen.extend(orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
    first = seen[0]
    assert first["type"] == "response.created" and first["response"]["status"] == "queued"
    last = seen[-1]["sequence_number"]
    rid = first["response"]["id"]
    rest = list(oai(slow).responses.retrieve(rid, stream=True, starting_after=last))
    assert rest[0].sequence_number == last + 1
    assert rest[-1].type == "response.completed"
    deltas = [e["delta"] for e in seen if e["type"] == "response.output_text.delta"]
    deltas += [e.delta for e in rest if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "You said: resume me please"


def test_cancel_background_and_not_synchronous(slow: Sim, oai: Clients) -> None:
    slow.reset()
    c = oai(slow)
    made = c.responses.create(model="gpt-4o", input="long " * 40, background=True)
    cancelled = c.responses.cancel(made.id)
    assert cancelled.status == "cancelled"
    assert c.responses.retrieve(made.id).status == "cancelled"
    sync = c.responses.create(model="gpt-4o", input="x")
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.cancel(sync.id)
    assert err.value.message.endswith("Cannot cancel a synchronous response.")
    r = httpx.get(f"{slow.url}{V1}/{sync.id}?stream=true", headers=AUTH)
    assert r.status_code == 400
