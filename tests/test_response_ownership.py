"""Issue 16: a stored response belongs to the gateway key that created it.

Key A creates; key B's retrieve, delete, input_items, cancel, stream resume and
previous_response_id all get the 404 an unknown id gets and reach no upstream;
key A's still work; also after a restart and across two replicas on Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, Sim
from tests.redis_support import private_db
from tests.test_responses import config, first_turn, responses_to

BOB_KEY = "test-gateway-key-bob"
ADMIN_KEY = "test-gateway-key-admin"


def team(sims: dict[str, Sim], **state: Any) -> dict[str, Any]:
    cfg = config(sims)
    cfg["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY},
            {"name": "bob", "key": BOB_KEY},
            {"name": "ops", "key": ADMIN_KEY, "admin": True},
        ]
    }
    if state:
        cfg["state"] = state
    return cfg


def as_key(gw: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def upstream_count(sims: dict[str, Sim]) -> int:
    return sum(len(responses_to(s)) for s in sims.values())


def refused_calls(c: openai.OpenAI, rid: str) -> list[Callable[[], Any]]:
    return [
        lambda: c.responses.retrieve(rid),
        lambda: c.responses.delete(rid),
        lambda: c.responses.input_items.list(rid),
        lambda: c.responses.cancel(rid),
        lambda: c.responses.retrieve(rid, stream=True, starting_after=1),
        lambda: c.responses.create(model="gpt-4o", input="x", previous_response_id=rid),
        lambda: c.responses.create(
            model="gpt-4o", input="x", previous_response_id=rid, stream=True
        ),
    ]


def assert_all_refused(c: openai.OpenAI, rid: str, sims: dict[str, Sim]) -> None:
    before = upstream_count(sims)
    for call in refused_calls(c, rid):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        body = err.value.body
        assert isinstance(body, dict) and body["code"] == "response_not_found", body
    assert upstream_count(sims) == before  # nothing was sent upstream


def test_other_keys_get_404_and_nothing_goes_upstream(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(team(sim))
    alice = as_key(gw, GATEWAY_KEY)
    rid = alice.responses.create(model="gpt-4o", input="mine").id
    streamed = [e for e in alice.responses.create(model="gpt-4o", input="mine", stream=True)]
    sid = streamed[0].response.id  # type: ignore[union-attr]
    for key in (BOB_KEY, ADMIN_KEY):  # admin keys get no exception (README "Security")
        for response_id in (rid, sid):
            assert_all_refused(as_key(gw, key), response_id, sim)
    # an id nobody created: the same answer (existence is not revealed)
    unknown = as_key(gw, BOB_KEY)
    with pytest.raises(openai.NotFoundError) as err:
        unknown.responses.retrieve("resp_doesnotexist")
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "response_not_found"
    # alice's own calls work
    assert alice.responses.retrieve(rid).id == rid
    assert alice.responses.create(model="gpt-4o", input="on", previous_response_id=sid).id
    wrong = httpx.put(gw.base_url + f"/responses/{rid}", headers={"api-key": BOB_KEY})
    assert wrong.status_code == 405
    deadline = time.monotonic() + 5
    while '"method":"PUT"' not in gw.logs() and time.monotonic() < deadline:
        time.sleep(0.05)  # the access log is written in batches
    assert '"path":"/v1/responses/{id}"' in gw.logs()
    # the access log names the refused key and a hash of the id, never the id itself
    lines = [json.loads(ln) for ln in gw.logs().splitlines() if ln.startswith("{")]
    refused = [ln for ln in lines if ln.get("error") == "response_not_found"]
    assert all(len(ln["response_id_sha256"]) == 16 for ln in refused)
    assert {ln["key"] for ln in refused} == {"bob", "ops"}
    assert all(ln["status"] == 404 for ln in refused)
    assert rid not in gw.logs() and sid not in gw.logs()


def test_ownership_survives_a_restart(
    sim: dict[str, Sim], start_gateway: Any, tmp_path: Any
) -> None:
    cfg = team(sim, path=str(tmp_path / "shared.db"))
    gw = start_gateway(cfg)
    rid = as_key(gw, GATEWAY_KEY).responses.create(model="gpt-4o", input="mine").id
    gw.stop()
    gw = start_gateway(cfg)
    assert_all_refused(as_key(gw, BOB_KEY), rid, sim)
    assert as_key(gw, GATEWAY_KEY).responses.retrieve(rid).id == rid


@pytest.fixture
def redis_url() -> Iterator[str]:
    with private_db() as url:
        yield url


@pytest.mark.redis
def test_two_replicas_on_redis_share_owners(
    redis_url: str, sim: dict[str, Sim], start_gateway: Any
) -> None:
    cfg = team(sim, redis_url=redis_url)
    a, b = start_gateway(cfg), start_gateway(cfg)
    rid, holder = first_turn(as_key(a, GATEWAY_KEY), "gpt-4o", sim)
    assert_all_refused(as_key(b, BOB_KEY), rid, sim)
    # replica b sends alice's follow-ups to the region that holds the response
    before = {n: len(responses_to(s)) for n, s in sim.items()}
    next_id = rid
    for i in range(6):
        next_id = (
            as_key(b, GATEWAY_KEY)
            .responses.create(model="gpt-4o", input=f"{i}", previous_response_id=next_id)
            .id
        )
    grew = [n for n, s in sim.items() if len(responses_to(s)) > before[n]]
    assert grew == [holder]
    assert as_key(b, GATEWAY_KEY).responses.retrieve(rid).id == rid
    assert httpx.get(b.url + "/healthz").status_code == 200
