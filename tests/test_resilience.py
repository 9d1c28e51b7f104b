"""Fault injection, end to end: the real gateway process in front of simulated
Azure regions that throttle, fail, hang, drop streams and die mid-run.

One test per rule of README "How failover works". Which region served is read
from the simulators' own counters (`/_sim/stats`), never from the gateway.
Timing-based checks keep wide margins: the machine running them is shared.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GATEWAY_KEY, Sim, base_config, start_sim, stop

PROMPT = "tell me about failover"
REPLY = "You said: " + PROMPT
MESSAGES = [{"role": "user", "content": PROMPT}]

# the hot path's upstream clients: timeouts and cancellation are theirs to get right
CLIENTS = ["h1", "aiohttp"]


def chat(gw: Any, model: str = "gpt-4o", **body: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        headers=gw.headers(),
        json={"model": model, "messages": MESSAGES, **body},
        timeout=30,
    )


def open_stream(gw: Any, model: str) -> Any:
    """A raw streamed chat request (a context manager giving the httpx response)."""
    return httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        headers=gw.headers(),
        json={"model": model, "messages": MESSAGES, "stream": True},
        timeout=10,
    )


def stream_text(gw: Any, model: str = "gpt-4o") -> str:
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=30)
    chunks = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)  # type: ignore[call-overload]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def requests_to(sim: Sim) -> int:
    return int(sim.stats()["requests"])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `check()`; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def access_log(gw: Any, n: int) -> list[dict[str, Any]]:
    """The gateway's first `n` access-log lines (written just after each response)."""

    def lines() -> list[dict[str, Any]]:
        return [
            json.loads(ln)
            for ln in gw.logs().splitlines()
            if ln.startswith("{") and '"request_id"' in ln  # not the gateway's own lines
        ]

    wait_until(lambda: len(lines()) >= n, 5, f"{n} access-log lines")
    return lines()[:n]


def config(sim: dict[str, Sim], models: dict[str, Any] | None = None, **routing: Any) -> Any:
    cfg = base_config(sim)
    cfg["routing"] = {"first_byte_timeout": 10, "cooldown": 30, **routing}
    if models is not None:
        cfg["models"] = models
    return cfg


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Sim]:
    """A region that streams 8 chunks 0.25 s apart: 1.75 s per stream."""
    s = start_sim("slowregion", "--chunk-delay", "0.25")
    yield s
    stop(s.proc)


@pytest.fixture
def slow(slow_sim: Sim) -> Sim:
    slow_sim.reset()
    return slow_sim


def with_slow(sim: dict[str, Sim], slow: Sim, **routing: Any) -> Any:
    cfg = config(sim, **routing)
    cfg["resources"]["slowregion"] = {"endpoint": slow.url, "keys": ["sim-key-1"]}
    cfg["models"]["slow-4o"] = ["slowregion/gpt-4o", "eastus/gpt-4o"]
    return cfg


# --- 429 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "cooldown", "expected"),
    [
        ({"retry_after_ms": 2000, "retry_after": 30}, 30, 2.0),  # retry-after-ms, exactly
        ({"retry_after": 2}, 30, 2.0),  # else retry-after
        ({}, 2, 2.0),  # else cooldown
    ],
    ids=["retry-after-ms", "retry-after", "cooldown"],
)
def test_429_fails_over_and_the_deployment_waits_out_its_retry_after(
    sim: dict[str, Sim], start_gateway: Any, fault: dict[str, Any], cooldown: float, expected: float
) -> None:
    gw = start_gateway(config(sim, cooldown=cooldown))
    sweden, eastus = sim["sweden"], sim["eastus"]
    sweden.fault("429", count=1, **fault)
    t0 = time.monotonic()
    assert chat(gw).json()["choices"][0]["message"]["content"] == REPLY
    assert sweden.stats()["by_status"] == {"429": 1}
    assert eastus.stats()["by_status"] == {"200": 1}

    # within retry-after: sweden (first in the list, healthy again) is not asked
    assert chat(gw).status_code == 200
    time.sleep(max(0.0, t0 + expected - 1.0 - time.monotonic()))
    assert chat(gw).status_code == 200
    assert requests_to(sweden) == 1
    assert requests_to(eastus) == 3

    # after it: sweden serves again
    time.sleep(max(0.0, t0 + expected + 0.5 - time.monotonic()))
    assert chat(gw).status_code == 200
    assert sweden.stats()["by_status"] == {"429": 1, "200": 1}


def test_all_throttled_client_gets_429_with_the_first_recovery(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim))
    sim["sweden"].fault("429", retry_after_ms=2500)
    sim["eastus"].fault("429", retry_after_ms=4000)
    r = chat(gw)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"  # 2.5 s, whole seconds rounded up
    assert 2000 < int(r.headers["retry-after-ms"]) <= 2500
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and set(err) == {"message", "type", "param", "code"}

    # both are cooling now: the gateway answers alone, with less time to wait
    r2 = chat(gw, stream=True)
    assert r2.status_code == 429
    assert int(r2.headers["retry-after-ms"]) <= int(r.headers["retry-after-ms"])
    assert requests_to(sim["sweden"]) == requests_to(sim["eastus"]) == 1

    # the SDK sees a RateLimitError carrying the header
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert int(info.value.response.headers["retry-after"]) in (1, 2, 3)


# --- 5xx, hang, deleted deployment ---------------------------------------------------------


def test_500_cools_the_deployment_and_fails_over(sim: dict[str, Sim], start_gateway: Any) -> None:
    gw = start_gateway(config(sim))
    sweden, eastus = sim["sweden"], sim["eastus"]
    sweden.fault("500", count=1)
    for stream in (False, True, False, True):
        r = chat(gw, stream=stream)
        assert r.status_code == 200
        assert REPLY.split()[0] in r.text
    # one 500, then sweden (healthy again) sits out its cooldown
    assert sweden.stats()["by_status"] == {"500": 1}
    assert eastus.stats()["by_status"] == {"200": 4}
    assert [a["attempts"] for a in access_log(gw, 4)] == [2, 1, 1, 1]


@pytest.mark.parametrize("client", CLIENTS)
def test_hang_beyond_first_byte_timeout_fails_over(
    sim: dict[str, Sim], start_gateway: Any, client: str
) -> None:
    gw = start_gateway(
        config(sim, first_byte_timeout=1), env={"AOAI_GATEWAY_UPSTREAM_CLIENT": client}
    )
    sweden, eastus = sim["sweden"], sim["eastus"]
    sweden.fault("hang", count=1)
    t0 = time.monotonic()
    assert stream_text(gw) == REPLY
    took = time.monotonic() - t0
    assert 0.9 < took < 5.0, took
    assert eastus.stats()["by_status"] == {"200": 1}
    # the gateway hung up on sweden: its connection is freed
    wait_until(lambda: sweden.stats()["in_flight"] == 0, 3, "sweden's hung request closed")
    assert sweden.stats()["disconnects"] == 1
    # and sweden cools down: the next request goes straight to eastus
    t1 = time.monotonic()
    assert chat(gw).status_code == 200
    assert time.monotonic() - t1 < 0.9
    assert (requests_to(sweden), requests_to(eastus)) == (1, 2)


@pytest.mark.parametrize("client", CLIENTS)
def test_slow_but_steady_upstream_is_not_cut_by_the_timeout(
    sim: dict[str, Sim], slow: Sim, start_gateway: Any, client: str
) -> None:
    # first byte after 0.6 s, then a chunk every 0.25 s for 1.75 s: every gap is under
    # first_byte_timeout (1 s), the whole answer is not
    gw = start_gateway(
        with_slow(sim, slow, first_byte_timeout=1), env={"AOAI_GATEWAY_UPSTREAM_CLIENT": client}
    )
    slow.fault("slow", delay=0.6, count=1)
    t0 = time.monotonic()
    assert stream_text(gw, "slow-4o") == REPLY
    assert time.monotonic() - t0 > 2.0
    assert slow.stats()["by_status"] == {"200": 1}
    assert requests_to(sim["eastus"]) == 0


def test_deployment_not_found_fails_over_and_warns_naming_it(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    models = {"gpt-4o": ["sweden/gpt-4o-deleted", "eastus/gpt-4o"]}
    gw = start_gateway(config(sim, models))
    assert stream_text(gw) == REPLY
    assert sim["sweden"].stats()["by_status"] == {"404": 1}
    warnings = [line for line in gw.logs().splitlines() if "WARNING" in line]
    assert any("gpt-4o-deleted" in w and "sweden" in w for w in warnings), gw.logs()


# --- streams that break ----------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_mid_stream_drop_ends_with_one_error_event(
    sim: dict[str, Sim], start_gateway: Any, client: str
) -> None:
    gw = start_gateway(config(sim), env={"AOAI_GATEWAY_UPSTREAM_CLIENT": client})
    sweden = sim["sweden"]

    # the openai SDK: an APIError while iterating, after part of the answer
    sweden.fault("drop", after_chunks=3, count=1)
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in sdk.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ):
            got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert 0 < len("".join(got)) < len(REPLY)
    assert "sweden/gpt-4o" in info.value.message

    # on the wire: events, then exactly one error event, then the end (no [DONE])
    sim["eastus"].fault("drop", after_chunks=3, count=1)  # sweden cools; eastus breaks too
    with open_stream(gw, "gpt-4o") as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert len(events) > 1
    assert all('"delta"' in e for e in events[:-1])
    last = json.loads(events[-1].removeprefix("data: "))
    assert set(last) == {"error"}
    assert last["error"]["code"] == "upstream_stream_error"
    assert "eastus/gpt-4o" in last["error"]["message"]


def test_whole_body_cut_short_fails_over(sim: dict[str, Sim], start_gateway: Any) -> None:
    # nothing reached the client yet, so a non-stream answer can still move on
    gw = start_gateway(config(sim))
    sim["sweden"].fault("drop", count=1)
    r = chat(gw)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == REPLY
    assert sim["eastus"].stats()["by_status"] == {"200": 1}


# --- keys ---------------------------------------------------------------------------------


def test_rejected_key_is_remembered_for_rejected_key_ttl(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    gw = start_gateway(config(sim, rejected_key_ttl=2))
    sweden = sim["sweden"]
    sweden.revoke("sim-key-1")
    t0 = time.monotonic()
    for stream in (False, True, False):
        assert chat(gw, stream=stream).status_code == 200
    # key1 once, then key2 of the same resource; eastus never needed
    assert sweden.stats()["by_status"] == {"401": 1, "200": 3}
    assert requests_to(sim["eastus"]) == 0
    keys = [r["headers"]["api-key"] for r in sweden.requests()]
    assert keys == ["sim-key-1", "sim-key-2", "sim-key-2", "sim-key-2"]
    # after the TTL, key1 gets another chance (it might have been restored)
    time.sleep(max(0.0, t0 + 2.5 - time.monotonic()))
    assert chat(gw).status_code == 200
    assert sweden.stats()["by_status"] == {"401": 2, "200": 4}


# --- routing --------------------------------------------------------------------------------


def test_priority_1_is_used_only_when_every_priority_0_is_out(
    sim: dict[str, Sim], start_gateway: Any
) -> None:
    models = {
        "gpt-4o": [
            {"resource": "sweden", "deployment": "gpt-4o", "priority": 1},  # spill-over
            {"resource": "eastus", "deployment": "gpt-4o", "weight": 1},
            {"resource": "eastus", "deployment": "gpt-4o-mini", "weight": 1},
        ]
    }
    gw = start_gateway(config(sim, models))
    sweden, eastus = sim["sweden"], sim["eastus"]
    for _ in range(20):
        assert chat(gw).status_code == 200
    assert requests_to(sweden) == 0
    assert set(eastus.stats()["by_deployment"]) == {"gpt-4o", "gpt-4o-mini"}

    eastus.fault("500", deployment="gpt-4o")  # one priority-0 deployment out
    for _ in range(10):
        assert chat(gw).status_code == 200
    assert requests_to(sweden) == 0

    eastus.fault("500")  # now both
    for _ in range(5):
        assert chat(gw).status_code == 200
    assert sweden.stats()["by_status"] == {"200": 5}


@pytest.mark.anyio
async def test_weights_share_the_traffic(sim: dict[str, Sim], start_gateway: Any) -> None:
    models = {
        "gpt-4o": [
            {"resource": "sweden", "deployment": "gpt-4o", "weight": 3},
            {"resource": "eastus", "deployment": "gpt-4o", "weight": 1},
        ]
    }
    gw = start_gateway(config(sim, models))
    n = 400
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(headers=gw.headers(), timeout=30) as client:

        async def one() -> int:
            async with limit:
                r = await client.post(
                    gw.base_url + "/chat/completions",
                    json={"model": "gpt-4o", "messages": MESSAGES},
                )
                return r.status_code

        statuses = await asyncio.gather(*(one() for _ in range(n)))
    assert set(statuses) == {200}
    share = requests_to(sim["sweden"]) / n
    assert requests_to(sim["sweden"]) + requests_to(sim["eastus"]) == n
    assert share == pytest.approx(0.75, abs=0.08)  # 3.7 standard deviations


def test_max_attempts_bounds_the_upstream_calls(sim: dict[str, Sim], start_gateway: Any) -> None:
    models = {
        "gpt-4o": ["sweden/gpt-4o", "eastus/gpt-4o", "sweden/gpt-4o-mini", "eastus/gpt-4o-mini"]
    }
    gw = start_gateway(config(sim, models, max_attempts=3))
    sim["sweden"].fault("500")
    sim["eastus"].fault("500")
    r = chat(gw)
    assert r.status_code == 502
    assert "3 attempts" in r.json()["error"]["message"]
    assert requests_to(sim["sweden"]) + requests_to(sim["eastus"]) == 3


# --- client disconnect ----------------------------------------------------------------------


def _raw_request(gw: Any, model: str, stream: bool) -> socket.socket:
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        b"authorization: Bearer " + GATEWAY_KEY.encode() + b"\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


@pytest.mark.parametrize("client", CLIENTS)
def test_disconnect_while_waiting_cancels_upstream_and_cools_nothing(
    sim: dict[str, Sim], start_gateway: Any, client: str
) -> None:
    gw = start_gateway(config(sim), env={"AOAI_GATEWAY_UPSTREAM_CLIENT": client})
    sweden = sim["sweden"]
    sweden.fault("hang", count=1)
    sock = _raw_request(gw, "gpt-4o", stream=True)
    wait_until(lambda: sweden.stats()["in_flight"] == 1, 5, "request reached sweden")
    sock.close()
    took = wait_until(lambda: sweden.stats()["in_flight"] == 0, 2, "upstream request cancelled")
    assert took < 1.0
    assert sweden.stats()["disconnects"] == 1
    # sweden is not in cooldown: the next request is served there
    assert chat(gw).status_code == 200
    assert sweden.stats()["by_status"] == {"200": 1}
    assert requests_to(sim["eastus"]) == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_disconnect_mid_stream_cancels_upstream_and_cools_nothing(
    sim: dict[str, Sim], slow: Sim, start_gateway: Any, client: str
) -> None:
    gw = start_gateway(with_slow(sim, slow), env={"AOAI_GATEWAY_UPSTREAM_CLIENT": client})
    with open_stream(gw, "slow-4o") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # some of the answer is here; hang up
    took = wait_until(lambda: slow.stats()["in_flight"] == 0, 2, "upstream stream cancelled")
    assert took < 1.0
    assert slow.stats()["disconnects"] == 1
    assert stream_text(gw, "slow-4o") == REPLY  # same deployment, not in cooldown
    assert slow.stats()["by_status"] == {"200": 1}
    assert requests_to(sim["eastus"]) == 0
    assert [a["status"] for a in access_log(gw, 2)] == [499, 200]


# --- 200 concurrent streams while a region fails half-way --------------------------------------


@dataclass
class Outcome:
    started: float  # monotonic
    ended: float
    result: str  # "ok" | "error_event" | anything else is a failure
    text: str = ""


async def _one_stream(client: openai.AsyncOpenAI, streaming: Counter[str]) -> Outcome:
    started = time.monotonic()
    text: list[str] = []
    try:
        chunks = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        async for chunk in chunks:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                if len(text) == 2:
                    streaming["mid-stream"] += 1
    except openai.APIStatusError as exc:
        return Outcome(started, time.monotonic(), f"HTTP {exc.status_code}")
    except openai.APIError as exc:
        if isinstance(exc.body, dict) and exc.body.get("code") == "upstream_stream_error":
            return Outcome(started, time.monotonic(), "error_event", "".join(text))
        return Outcome(started, time.monotonic(), f"{type(exc).__name__}: {exc}")
    return Outcome(started, time.monotonic(), "ok", "".join(text))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["500", "drop", "kill"])
@pytest.mark.anyio
async def test_200_concurrent_streams_while_one_region_fails_half_way(
    start_gateway: Any, mode: str
) -> None:
    # a stream takes ~0.8 s (8 chunks, 0.1 s apart), so region A fails with streams in flight
    a = start_sim("region-a", "--chunk-delay", "0.1")
    b = start_sim("region-b", "--chunk-delay", "0.1")
    try:
        cfg = base_config({"eastus": a, "sweden": b})
        cfg["models"] = {
            "gpt-4o": [
                {"resource": "eastus", "deployment": "gpt-4o", "weight": 1},
                {"resource": "sweden", "deployment": "gpt-4o", "weight": 1},
            ]
        }
        cfg["routing"] = {"first_byte_timeout": 10, "cooldown": 60}
        gw = start_gateway(cfg)
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=400), timeout=30)
        client = openai.AsyncOpenAI(
            base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, http_client=http
        )
        async with http:
            streaming: Counter[str] = Counter()
            tasks = [asyncio.ensure_future(_one_stream(client, streaming)) for _ in range(100)]
            while streaming["mid-stream"] < 60:  # most of the first 100 are mid-answer
                await asyncio.sleep(0.01)
            a_before = {}
            if mode == "kill":
                a_before = a.stats()
                a.proc.send_signal(signal.SIGKILL)  # the region is gone, streams and all
            else:
                a.fault(mode, after_chunks=3)  # every new request to A fails from now on
            failed_at = time.monotonic()
            for _ in range(100):  # the second half arrives over ~1 s
                tasks.append(asyncio.ensure_future(_one_stream(client, streaming)))
                await asyncio.sleep(0.01)
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)  # none hangs
        a_stats = a_before if mode == "kill" else a.stats()
        b_stats = b.stats()
    finally:
        stop(a.proc)
        stop(b.proc)

    results = Counter(o.result for o in outcomes)
    assert set(results) <= {"ok", "error_event"}, results
    # no silent truncation: an answer that ended without an error event is whole
    assert all(o.text == REPLY for o in outcomes if o.result == "ok")
    broken = [o for o in outcomes if o.result == "error_event"]
    assert all(len(o.text) < len(REPLY) for o in broken)
    # once a client has seen A fail, A is cooling: everything started after that succeeds
    seen = min((o.ended for o in broken), default=failed_at)
    later = [o for o in outcomes if o.started > seen]
    assert later and all(o.result == "ok" for o in later)  # the other region took over
    if mode == "500":
        assert results == {"ok": 200}  # failover before the first byte: nobody noticed
    if mode == "kill":
        assert broken  # streams in flight on A were cut, and said so
    access = access_log(gw, len(outcomes))
    print(
        f"\n[200 streams, region A {mode} half-way] sent {len(outcomes)}, "
        f"completed {results['ok']}, ended with error event {results['error_event']}, "
        f"failed otherwise {len(outcomes) - results['ok'] - results['error_event']}; "
        f"upstream calls: region A {a_stats.get('requests', '?')}"
        f"{' (before the kill)' if mode == 'kill' else ''}, region B {b_stats['requests']}; "
        f"gateway attempts {sum(x['attempts'] for x in access)}"
    )
