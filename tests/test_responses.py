"""The Responses API and embeddings through the real gateway, with openai-python
against the simulated regions: plain, streamed, the stream helper, stored-response
affinity (chains, owner region down, restart, workers), mid-stream failures.

Which region served is read from the simulators' recorded requests, never from
the gateway. Key ownership of stored responses (issue 16) is in
tests/test_response_ownership.py.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, Sim, base_config

PROMPT = "tell me about affinity"


def config(sims: dict[str, Sim], **routing: Any) -> dict[str, Any]:
    """gpt-4o: both regions at equal weight (either may serve a first turn);
    only-sweden / prefers-eastus: a first turn on sweden, then a model whose routing
    would pick eastus."""
    cfg = base_config(sims)
    cfg["models"]["gpt-4o"] = [
        {"resource": "sweden", "deployment": "gpt-4o", "weight": 1},
        {"resource": "eastus", "deployment": "gpt-4o", "weight": 1},
    ]
    cfg["models"]["only-sweden"] = ["sweden/gpt-4o"]
    cfg["models"]["prefers-eastus"] = [
        {"resource": "eastus", "deployment": "gpt-4o"},
        {"resource": "sweden", "deployment": "gpt-4o", "priority": 1},
    ]
    cfg["models"]["text-embedding-3-small"] = [
        "eastus/text-embedding-3-small",
        "sweden/text-embedding-3-small",
    ]
    cfg["routing"] = {"first_byte_timeout": 10, "cooldown": 30, **routing}
    return cfg


def client(gw: Any, key: str = GATEWAY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def responses_to(sim: Sim) -> list[dict[str, Any]]:
    """The Responses requests a region received (creates and stored-response calls)."""
    return [r for r in sim.requests() if "/responses" in r["path"]]


def first_turn(c: openai.OpenAI, model: str, sims: dict[str, Sim]) -> tuple[str, str]:
    """(response id, region that holds it)."""
    before = {n: len(responses_to(s)) for n, s in sims.items()}
    r = c.responses.create(model=model, input=PROMPT)
    served = [n for n, s in sims.items() if len(responses_to(s)) > before[n]]
    assert len(served) == 1, served
    return r.id, served[0]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def access_log(gw: Any) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in gw.logs().splitlines() if ln.startswith("{")]


# --- the API through openai-python ------------------------------------------------------------


def test_create_plain_streamed_helper_retrieve_delete(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim))
    c = client(gw)
    r = c.responses.create(model="only-sweden", input=PROMPT)
    assert r.status == "completed"
    assert r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0

    events = list(c.responses.create(model="only-sweden", input=PROMPT, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text  # type: ignore[union-attr]

    with c.responses.stream(model="only-sweden", input=PROMPT) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text

    got = c.responses.retrieve(r.id)
    assert (got.id, got.output_text) == (r.id, r.output_text)
    items = c.responses.input_items.list(r.id)
    assert len(items.data) >= 1
    deleted = c.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)  # Azure's own 404: the gateway still knows where it was
    assert all("/openai/responses" in x["path"] for x in responses_to(sim["sweden"]))
    assert responses_to(sim["eastus"]) == []  # legacy sweden only; nothing strayed

    # usage and metrics carry the operation
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'api="responses"' in metrics
    assert any(
        ln.startswith("aoai_gateway_tokens_total")
        and 'api="responses"' in ln
        and 'type="prompt"' in ln
        for ln in metrics.splitlines()
    )


def test_embeddings_list_input_base64_default(sim: dict[str, Sim], start_gateway: Any) -> None:
    gw = start_gateway(config(sim))
    out = client(gw).embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(out.data) == 2
    assert all(isinstance(x, float) for x in out.data[0].embedding)
    assert len(out.data[0].embedding) > 8
    assert out.usage.prompt_tokens > 0
    sent = [r for r in sim["eastus"].requests() if r["path"].endswith("/embeddings")]
    assert sent[-1]["body"]["encoding_format"] == "base64"  # the SDK's default, passed on
    assert sent[-1]["body"]["model"] == "text-embedding-3-small"
    metrics = httpx.get(gw.url + "/metrics").text
    assert any(
        'api="embeddings"' in ln and 'type="prompt"' in ln and ln.startswith("aoai_gateway_tokens")
        for ln in metrics.splitlines()
    )


# --- affinity -----------------------------------------------------------------------------------


def test_follow_ups_stay_on_the_region_that_holds_the_response(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim))
    c = client(gw)
    # routing prefers eastus for this model, but the response lives on sweden
    rid, region = first_turn(c, "only-sweden", sim)
    assert region == "sweden"
    for i in range(4):
        nxt = c.responses.create(
            model="prefers-eastus", input=f"and {i}?", previous_response_id=rid
        )
        rid = nxt.id
    assert responses_to(sim["eastus"]) == []
    # equal weights: each follow-up would pick the other region half of the time
    rid, region = first_turn(c, "gpt-4o", sim)
    other = "eastus" if region == "sweden" else "sweden"
    seen_other = len(responses_to(sim[other]))
    for i in range(8):
        stream = c.responses.create(
            model="gpt-4o", input=f"more {i}", previous_response_id=rid, stream=i % 2 == 1
        )
        if i % 2:
            events = list(stream)  # type: ignore[arg-type]
            assert events[-1].type == "response.completed"
            rid = events[0].response.id  # type: ignore[union-attr]
        else:
            rid = stream.id  # type: ignore[union-attr]
    assert len(responses_to(sim[other])) == seen_other


def test_owner_region_down_is_a_clear_error_and_nothing_goes_elsewhere(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim))
    c = client(gw)
    rid, region = first_turn(c, "gpt-4o", sim)
    other = "eastus" if region == "sweden" else "sweden"
    sim[region].fault("500")
    before_other = len(responses_to(sim[other]))
    with pytest.raises(openai.APIStatusError) as err:
        c.responses.create(model="gpt-4o", input="again", previous_response_id=rid)
    assert err.value.status_code == 503
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "stored_response_unavailable"
    assert rid in body["message"] and region in body["message"]
    assert int(err.value.response.headers["retry-after"]) >= 1  # cooling: waiting helps
    with pytest.raises(openai.APIStatusError) as err:
        c.responses.retrieve(rid)
    assert err.value.status_code == 503
    assert len(responses_to(sim[other])) == before_other  # never the other region
    # first turns and store:false fail over exactly like chat
    assert c.responses.create(model="gpt-4o", input="new").status == "completed"
    assert c.responses.create(model="gpt-4o", input="new", store=False).status == "completed"
    assert len(responses_to(sim[other])) == before_other + 2


def test_affinity_survives_a_restart(
    sim: dict[str, Sim], start_gateway: Any, tmp_path: Any
) -> None:
    cfg = config(sim)
    cfg["state"] = {"path": str(tmp_path / "shared.db")}
    gw = start_gateway(cfg)
    rid, region = first_turn(client(gw), "gpt-4o", sim)
    other = "eastus" if region == "sweden" else "sweden"
    gw.stop()
    gw = start_gateway(cfg)
    c = client(gw)
    seen_other = len(responses_to(sim[other]))
    for i in range(6):
        rid = c.responses.create(model="gpt-4o", input=f"{i}", previous_response_id=rid).id
    assert c.responses.retrieve(rid).id == rid
    assert len(responses_to(sim[other])) == seen_other


@pytest.mark.slow
def test_affinity_across_two_workers(sim: dict[str, Sim], start_gateway: Any) -> None:
    gw = start_gateway(config(sim), "--workers", "2")
    rid, region = first_turn(client(gw), "gpt-4o", sim)
    other = "eastus" if region == "sweden" else "sweden"
    seen_other = len(responses_to(sim[other]))
    for i in range(10):  # a new connection each time: either worker may take it
        with openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0) as c:
            rid = c.responses.create(model="gpt-4o", input=f"{i}", previous_response_id=rid).id
    assert len(responses_to(sim[other])) == seen_other


# --- streams that break, clients that leave --------------------------------------------------


def test_mid_stream_drop_ends_with_error_and_response_failed(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim, cooldown=0))  # sweden serves again after the break
    sim["sweden"].fault("drop", after_chunks=2, count=1)
    with pytest.raises(openai.APIError):
        for _ in client(gw).responses.create(model="only-sweden", input=PROMPT, stream=True):
            pass
    sim["sweden"].fault("drop", after_chunks=2, count=1)
    with httpx.stream(
        "POST",
        gw.base_url + "/responses",
        headers=gw.headers(),
        json={"model": "only-sweden", "input": PROMPT, "stream": True},
        timeout=30,
    ) as r:
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events[-2].startswith("event: error\n")
    assert events[-1].startswith("event: response.failed\n")
    failed = json.loads(events[-1].split("data: ", 1)[1])
    created = json.loads(events[0].split("data: ", 1)[1])
    assert failed["response"]["id"] == created["response"]["id"]
    assert failed["sequence_number"] > 0


def test_client_hang_up_closes_the_upstream_stream(sim: dict[str, Sim], start_gateway: Any) -> None:
    gw = start_gateway(config(sim))
    sweden = sim["sweden"]
    sweden.fault("slow", delay=0.3)
    body = json.dumps({"model": "only-sweden", "input": PROMPT, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(
        b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {GATEWAY_KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_until(lambda: sweden.stats()["in_flight"] == 1, 5, "stream reached sweden")
    sock.recv(200)
    sock.close()
    wait_until(lambda: sweden.stats()["in_flight"] == 0, 3, "upstream stream closed")


def test_background_response_resumed_as_a_stream_and_cancelled(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim))
    c = client(gw)
    r = c.responses.create(model="gpt-4o", input=PROMPT, background=True)
    assert r.status in ("queued", "in_progress")
    events = list(c.responses.retrieve(r.id, stream=True, starting_after=0))
    assert events[-1].type == "response.completed"
    assert all(e.sequence_number > 0 for e in events)  # resumed after event 0
    late = c.responses.create(model="gpt-4o", input=PROMPT, background=True)
    cancelled = c.responses.cancel(late.id)
    assert cancelled.id == late.id
    assert cancelled.status in ("cancelled", "completed")


def test_allowlists_and_limits_apply_to_every_operation(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    cfg = config(sim)
    cfg["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY, "rpm": 2},
            {"name": "mini", "key": "test-gateway-key-mini", "models": ["gpt-4o-mini"]},
        ]
    }
    gw = start_gateway(cfg)
    mini = client(gw, "test-gateway-key-mini")
    with pytest.raises(openai.PermissionDeniedError):
        mini.responses.create(model="gpt-4o", input=PROMPT)
    with pytest.raises(openai.PermissionDeniedError):
        mini.embeddings.create(model="text-embedding-3-small", input="x")
    alice = client(gw)
    alice.embeddings.create(model="text-embedding-3-small", input="x")
    alice.responses.create(model="gpt-4o", input=PROMPT)
    with pytest.raises(openai.RateLimitError):  # one rpm window over both operations
        alice.embeddings.create(model="text-embedding-3-small", input="x")
