"""The attempt loop, one rule per test: `failover.connect` through the real
`HttpxUpstream` (answers mocked with respx) and a real `MemoryState`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import respx

from app.config import Config
from app.errors import RateLimited, UpstreamFailed, UpstreamKeysRejected, UpstreamTimeout
from app.failover import Policy, Trace, connect
from app.gateway import Gateway
from app.routing import Target, build_table
from app.state import MemoryState
from app.upstream import HttpxUpstream, Timeouts
from app.upstream_auth import Credentials, EntraKey
from tests.test_upstream_auth import Script

EAST = "https://east.example.com/openai/v1/chat/completions"
WEST = "https://west.example.com/openai/v1/chat/completions"
SWEDEN = "https://sweden.example.com/openai/v1/chat/completions"
OK_BODY = {"choices": [{"message": {"content": "hi"}}]}


def table(**routing: Any) -> dict[str, tuple[Target, ...]]:
    config = Config.model_validate(
        {
            "resources": {
                name: {
                    "endpoint": f"https://{name}.example.com",
                    "keys": [f"{name}-k1", f"{name}-k2"],
                }
                for name in ("east", "west", "sweden")
            },
            "models": {
                "gpt-4o": ["east/gpt-4o", "west/gpt-4o", "sweden/gpt-4o"],
                "two-on-east": ["east/gpt-4o", "east/gpt-4o-mini", "sweden/gpt-4o"],
                "many": [
                    "east/a",
                    "east/b",
                    "west/a",
                    "west/b",
                    "sweden/a",
                ],
            },
            "routing": routing,
        }
    )
    return build_table(config)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failovers: list[str] = []

    def upstream(self, api: str, target: Target, status: str) -> None:
        self.calls.append((target.id, status))

    def failover(self, api: str, reason: str) -> None:
        self.failovers.append(reason)


class ChatCall:
    """The upstream call of a chat request: its URL, a body naming the deployment."""

    api = "chat"
    method = "POST"
    addressed = False
    content_type = None

    def prepare(self, target: Target) -> tuple[str, bytes]:
        return target.urls["chat"], b'{"model": "%s"}' % target.deployment.encode()


def policy(**over: Any) -> Policy:
    base: dict[str, Any] = {
        "max_attempts": 4,
        "cooldown": 30.0,
        "rejected_key_ttl": 300.0,
        "timeouts": Timeouts(connect=1.0, read=1.0),
    }
    base.update(over)
    return Policy(**base)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


async def run(
    targets: tuple[Target, ...] | list[Target],
    state: MemoryState,
    pol: Policy | None = None,
    *,
    recovers: float | None = None,
    recorder: Recorder | None = None,
    buffer: bool = False,
    call: Any = None,
) -> tuple[Any, Trace]:
    trace = Trace()
    upstream = HttpxUpstream()
    try:
        resp = await connect(
            upstream,
            state,
            pol or policy(),
            list(targets),
            recovers,
            call or ChatCall(),
            recorder or Recorder(),
            trace,
            buffer=buffer,
        )
        body = await resp.read()
        await resp.aclose()
        return (resp.status, body), trace
    finally:
        await upstream.aclose()


def keys_used(route: respx.Route) -> list[str]:
    return [call.request.headers["api-key"] for call in route.calls]


# --- success and the 4xx the caller must see --------------------------------------


class FormCall(ChatCall):
    """A multipart upload: its own content type, a URL addressing a stored thing."""

    content_type = "multipart/form-data; boundary=xyz"
    addressed = True


@pytest.mark.anyio
async def test_a_call_with_its_own_content_type_sends_it(mock: respx.MockRouter) -> None:
    east = mock.post(EAST).respond(200, json=OK_BODY)
    (status, _), _ = await run(table()["gpt-4o"], MemoryState(), call=FormCall())
    assert status == 200
    sent = east.calls.last.request.headers
    assert sent["content-type"] == "multipart/form-data; boundary=xyz"
    assert sent["api-key"] == "east-k1"


@pytest.mark.anyio
async def test_a_404_about_an_addressed_thing_is_the_answer(mock: respx.MockRouter) -> None:
    east = mock.post(EAST).respond(404, json={"error": {"code": "not_found"}})
    west = mock.post(WEST).respond(200, json=OK_BODY)
    (status, _), trace = await run(table()["gpt-4o"], MemoryState(), call=FormCall())
    assert status == 404  # not "deployment not found": no failover
    assert (east.call_count, west.call_count, trace.attempts) == (1, 0, 1)


@pytest.mark.anyio
async def test_first_candidate_answers_and_the_rest_are_not_called(mock: respx.MockRouter) -> None:
    east = mock.post(EAST).respond(200, json=OK_BODY)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    (status, _), trace = await run(table()["gpt-4o"], MemoryState())
    assert status == 200
    assert trace.attempts == 1
    assert keys_used(east) == ["east-k1"]
    assert not west.called


@pytest.mark.anyio
async def test_other_4xx_is_returned_as_is_without_retry(mock: respx.MockRouter) -> None:
    error = {"error": {"code": "content_filter", "message": "filtered"}}
    east = mock.post(EAST).respond(400, json=error)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    (status, body), _ = await run(table()["gpt-4o"], state)
    assert status == 400
    assert b"content_filter" in body
    assert east.call_count == 1
    assert not west.called
    assert state.cooling(time.time()) == {}


# --- 429 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "30"}, 1.5),  # ms wins, exactly
        ({"x-ms-retry-after-ms": "2500", "retry-after": "30"}, 2.5),
        ({"retry-after": "7"}, 7.0),
        ({}, 30.0),  # no hint: `cooldown`
    ],
    ids=["retry-after-ms", "x-ms-retry-after-ms", "retry-after", "cooldown"],
)
@pytest.mark.anyio
async def test_429_cools_the_deployment_for_retry_after_and_tries_the_next(
    mock: respx.MockRouter, headers: dict[str, str], expected: float
) -> None:
    east = mock.post(EAST).respond(429, headers=headers, json={"error": {"code": "429"}})
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    recorder = Recorder()
    before = time.time()
    (status, _), _ = await run(table()["gpt-4o"], state, recorder=recorder)
    after = time.time()
    assert status == 200
    assert (east.call_count, west.call_count) == (1, 1)
    assert keys_used(east) == ["east-k1"]  # a throttled deployment is left, not its next key
    until = state.cooling_until("east/gpt-4o")
    assert before + expected <= until <= after + expected
    assert recorder.failovers == ["throttled"]


# --- 5xx, timeouts, connection errors --------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 408])
@pytest.mark.anyio
async def test_server_error_cools_for_cooldown_and_tries_the_next(
    mock: respx.MockRouter, status: int
) -> None:
    east = mock.post(EAST).respond(status, json={"error": {"code": "InternalServerError"}})
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    before = time.time()
    (code, _), _ = await run(table()["gpt-4o"], state, policy(cooldown=12.0))
    assert code == 200
    assert (east.call_count, west.call_count) == (1, 1)
    assert keys_used(east) == ["east-k1"]  # a sick deployment is left, not retried on key2
    assert before + 12.0 <= state.cooling_until("east/gpt-4o") <= time.time() + 12.0
    assert state.cooling_until("west/gpt-4o") == 0.0


@pytest.mark.anyio
async def test_cooldown_is_per_deployment_not_per_resource(mock: respx.MockRouter) -> None:
    # east/gpt-4o and east/gpt-4o-mini share a resource and a URL (v1: model in the body)
    def by_deployment(request: httpx.Request) -> httpx.Response:
        if b'"gpt-4o"' in request.content:
            return httpx.Response(500)
        return httpx.Response(200, json=OK_BODY)

    east = mock.post(EAST).mock(side_effect=by_deployment)
    state = MemoryState()
    (code, _), _ = await run(table()["two-on-east"], state)
    assert (code, east.call_count) == (200, 2)
    assert set(state.cooling(time.time())) == {"east/gpt-4o"}
    assert state.rejected_keys(time.time()) == {}


@pytest.mark.parametrize(
    ("error", "reason"),
    [(httpx.ReadTimeout, "timeout"), (httpx.ConnectError, "connect_error")],
)
@pytest.mark.anyio
async def test_timeout_or_connection_error_cools_and_tries_the_next(
    mock: respx.MockRouter, error: type[Exception], reason: str
) -> None:
    mock.post(EAST).mock(side_effect=error)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    recorder = Recorder()
    (code, _), trace = await run(table()["gpt-4o"], state, recorder=recorder)
    assert code == 200
    assert west.call_count == 1
    assert state.cooling_until("east/gpt-4o") > time.time() + 25
    assert recorder.calls[0] == ("east/gpt-4o", reason)
    assert trace.failures[0][1] == reason


@pytest.mark.anyio
async def test_cooldown_zero_never_cools(mock: respx.MockRouter) -> None:
    mock.post(EAST).respond(500)
    mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    await run(table()["gpt-4o"], state, policy(cooldown=0.0))
    assert state.cooling(time.time()) == {}


class _Broken(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"choices": [{"mess'
        raise httpx.ReadError("connection reset")


@pytest.mark.anyio
async def test_whole_body_cut_short_fails_over_before_the_client_sees_anything(
    mock: respx.MockRouter,
) -> None:
    mock.post(EAST).mock(return_value=httpx.Response(200, stream=_Broken()))
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    (code, body), trace = await run(table()["gpt-4o"], state, buffer=True)
    assert (code, west.call_count) == (200, 1)
    assert body == httpx.Response(200, json=OK_BODY).content
    assert state.cooling_until("east/gpt-4o") > time.time()
    assert trace.failures[0] == (table()["gpt-4o"][0], "stream_error")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.anyio
async def test_redirect_is_a_failed_attempt_never_followed_nor_relayed(
    mock: respx.MockRouter, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = mock.post("https://elsewhere.example.com/x").respond(200, json=OK_BODY)
    mock.post(EAST).respond(status, headers={"location": "https://elsewhere.example.com/x"})
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    with caplog.at_level(logging.WARNING, logger="aoai_gateway"):
        (code, _), trace = await run(table()["gpt-4o"], state, buffer=True)
    assert (code, west.call_count, elsewhere.call_count) == (200, 1, 0)
    assert state.cooling_until("east/gpt-4o") > time.time()
    assert trace.failures[0][1] == f"HTTP {status}"
    assert f"answered HTTP {status} (a redirect" in caplog.text


@pytest.mark.anyio
async def test_whole_body_over_the_limit_fails_over(mock: respx.MockRouter) -> None:
    mock.post(EAST).respond(200, content=b"x" * 2000)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    small = policy(timeouts=Timeouts(connect=1.0, read=1.0, max_body=1000))
    (code, _), trace = await run(table()["gpt-4o"], state, small, buffer=True)
    assert (code, west.call_count) == (200, 1)
    assert trace.failures[0][1] == "stream_error"
    assert state.cooling_until("east/gpt-4o") > time.time()


# --- 404 ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_deployment_not_found_tries_the_next_and_warns_naming_it(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    not_found = {"error": {"code": "DeploymentNotFound", "message": "does not exist"}}
    east = mock.post(EAST).respond(404, json=not_found)
    mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    logger = logging.getLogger("aoai_gateway")
    logger.addHandler(caplog.handler)  # the CLI may have turned propagation off
    try:
        (code, _), _ = await run(table()["gpt-4o"], state)
    finally:
        logger.removeHandler(caplog.handler)
    assert code == 200
    assert east.call_count == 1  # not retried on key2: the key is not the problem
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gpt-4o" in m and "east" in m and "not found" in m for m in warnings), warnings


# --- 401/403 -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.anyio
async def test_rejected_key_moves_to_the_next_key_of_the_same_resource_and_is_remembered(
    mock: respx.MockRouter, status: int
) -> None:
    def by_key(request: httpx.Request) -> httpx.Response:
        if request.headers["api-key"] == "east-k1":
            return httpx.Response(status, json={"error": {"code": str(status)}})
        return httpx.Response(200, json=OK_BODY)

    east = mock.post(EAST).mock(side_effect=by_key)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    targets = table()["gpt-4o"]  # east, west, sweden
    before = time.time()
    (code, _), trace = await run(targets, state, policy(rejected_key_ttl=120.0))
    assert code == 200
    assert keys_used(east) == ["east-k1", "east-k2"]  # same resource, next key, at once
    assert not west.called
    assert trace.attempts == 2
    key1 = targets[0].keys[0].id
    rejected = state.rejected_keys(time.time())
    assert list(rejected) == [key1]  # per key: key2 and other resources untouched
    assert before + 120.0 <= rejected[key1] <= time.time() + 120.0
    assert state.cooling(time.time()) == {}  # a bad key says nothing of the deployment

    # the next request, to another deployment of the same resource too, skips key1
    await run(table()["two-on-east"][1:], state)
    assert keys_used(east)[2:] == ["east-k2"]


@pytest.mark.anyio
async def test_rejected_key_is_tried_again_after_its_ttl(mock: respx.MockRouter) -> None:
    east = mock.post(EAST).respond(200, json=OK_BODY)
    targets = table()["gpt-4o"]
    state = MemoryState()
    state.reject_key(targets[0].keys[0].id, time.time() - 1)  # remembered, but expired
    await run(targets, state)
    assert keys_used(east) == ["east-k1"]


def test_rejected_key_ttl_defaults_to_five_minutes_and_is_configurable() -> None:
    services: Any = SimpleNamespace(
        credentials=Credentials(), budgets=SimpleNamespace(configure=lambda limits: None)
    )
    assert Gateway(Config(), services).policy.rejected_key_ttl == 300.0
    config = Config.model_validate({"routing": {"rejected_key_ttl": 42}})
    assert Gateway(config, services).policy.rejected_key_ttl == 42.0


@pytest.mark.anyio
async def test_every_key_rejected_is_502_naming_the_resources(mock: respx.MockRouter) -> None:
    mock.post(EAST).respond(401)
    mock.post(WEST).respond(403)
    mock.post(SWEDEN).respond(401)
    with pytest.raises(UpstreamKeysRejected) as info:
        await run(table()["gpt-4o"], MemoryState(), policy(max_attempts=10))
    assert info.value.status == 502
    assert "east, sweden, west" in info.value.message
    assert "-k1" not in info.value.message and "-k2" not in info.value.message


# --- max_attempts ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_at_most_max_attempts_upstream_calls(mock: respx.MockRouter) -> None:
    route = mock.route(method="POST").respond(500)
    with pytest.raises(UpstreamFailed) as info:
        await run(table()["many"], MemoryState(), policy(max_attempts=3))
    assert route.call_count == 3
    assert "3 attempts" in info.value.message


@pytest.mark.anyio
async def test_max_attempts_counts_key_retries_too(mock: respx.MockRouter) -> None:
    route = mock.route(method="POST").respond(401)
    with pytest.raises(UpstreamKeysRejected):
        await run(table()["many"], MemoryState(), policy(max_attempts=3))
    assert route.call_count == 3


# --- what the caller gets when nothing served ------------------------------------------


@pytest.mark.anyio
async def test_all_throttled_is_429_with_the_first_recovery(mock: respx.MockRouter) -> None:
    mock.post(EAST).respond(429, headers={"retry-after-ms": "4000"})
    mock.post(WEST).respond(429, headers={"retry-after-ms": "2300"})
    mock.post(SWEDEN).respond(429, headers={"retry-after": "9"})
    with pytest.raises(RateLimited) as info:
        await run(table()["gpt-4o"], MemoryState())
    err = info.value
    assert err.status == 429
    assert 2.0 < err.retry_after <= 2.3
    assert dict(err.headers()) == {
        b"retry-after": b"3",  # whole seconds, rounded up
        b"retry-after-ms": str(int(err.retry_after * 1000) + 1).encode(),
    }


@pytest.mark.anyio
async def test_all_cooling_is_429_without_any_upstream_call(mock: respx.MockRouter) -> None:
    route = mock.route(method="POST").respond(200, json=OK_BODY)
    with pytest.raises(RateLimited) as info:
        await run([], MemoryState(), recovers=time.time() + 5.0)
    assert 4.5 < info.value.retry_after <= 5.0
    assert not route.called


@pytest.mark.anyio
async def test_throttled_and_failed_together_is_429_until_the_first_recovers(
    mock: respx.MockRouter,
) -> None:
    # east throttled for 20 s, west down (cooldown 8 s), sweden deleted: waiting
    # helps, and west is the first back.
    mock.post(EAST).respond(429, headers={"retry-after-ms": "20000"})
    mock.post(WEST).respond(500)
    mock.post(SWEDEN).respond(404, json={"error": {"code": "DeploymentNotFound"}})
    with pytest.raises(RateLimited) as info:
        await run(table()["gpt-4o"], MemoryState(), policy(cooldown=8.0))
    assert 7.5 < info.value.retry_after <= 8.0


@pytest.mark.anyio
async def test_attempts_spent_on_throttles_with_candidates_left_say_retry_now(
    mock: respx.MockRouter,
) -> None:
    mock.post(EAST).respond(429, headers={"retry-after": "60"})
    west = mock.post(WEST).respond(429, headers={"retry-after": "60"})
    sweden = mock.post(SWEDEN).respond(200, json=OK_BODY)
    with pytest.raises(RateLimited) as info:
        await run(table()["gpt-4o"], MemoryState(), policy(max_attempts=2))
    assert west.called and not sweden.called
    assert info.value.retry_after < 1.0  # sweden is untried and ready: not 60 s


@pytest.mark.anyio
async def test_every_candidate_failing_hard_is_502(mock: respx.MockRouter) -> None:
    mock.post(EAST).respond(500)
    mock.post(WEST).mock(side_effect=httpx.ConnectError)
    mock.post(SWEDEN).respond(404)
    with pytest.raises(UpstreamFailed) as info:
        await run(table()["gpt-4o"], MemoryState())
    assert info.value.status == 502
    for name in ("east/gpt-4o: HTTP 500", "west/gpt-4o: connect_error", "sweden/gpt-4o"):
        assert name in info.value.message


@pytest.mark.anyio
async def test_every_candidate_timing_out_is_504(mock: respx.MockRouter) -> None:
    mock.route(method="POST").mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(UpstreamTimeout) as info:
        await run(table()["gpt-4o"], MemoryState())
    assert info.value.status == 504


# --- cancellation ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_request_touches_no_state(mock: respx.MockRouter) -> None:
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    mock.post(EAST).mock(side_effect=hang)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    recorder = Recorder()
    task = asyncio.ensure_future(run(table()["gpt-4o"], state, recorder=recorder))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    now = time.time()
    assert state.cooling(now) == {}
    assert state.rejected_keys(now) == {}
    assert not west.called
    assert recorder.failovers == []


# --- Entra ID resources (app.upstream_auth) -------------------------------------------


@pytest.fixture
async def entra_table() -> AsyncIterator[tuple[dict[str, tuple[Target, ...]], Script]]:
    """east authenticates with Entra ID (scripted credential), west with keys."""
    script = Script()
    config = Config.model_validate(
        {
            "resources": {
                "east": {"endpoint": "https://east.example.com", "auth": "entra"},
                "west": {"endpoint": "https://west.example.com", "keys": ["west-k1"]},
            },
            "models": {"gpt-4o": ["east/gpt-4o", "west/gpt-4o"], "east-only": ["east/gpt-4o"]},
        }
    )
    creds = Credentials(script.factory)
    entra = creds.bind(config)
    await creds.start()
    yield build_table(config, entra), script
    await creds.close()


def bearers(route: respx.Route) -> list[str]:
    return [call.request.headers["authorization"] for call in route.calls]


@pytest.mark.anyio
async def test_entra_401_gets_a_new_token_and_one_retry_on_the_same_resource(
    mock: respx.MockRouter, entra_table: tuple[dict[str, tuple[Target, ...]], Script]
) -> None:
    tables, script = entra_table
    east = mock.post(EAST).mock(
        side_effect=[httpx.Response(401), httpx.Response(200, json=OK_BODY)]
    )
    west = mock.post(WEST).respond(200, json=OK_BODY)
    (status, _), trace = await run(tables["gpt-4o"], MemoryState())
    assert status == 200 and trace.attempts == 2 and not west.called
    assert bearers(east) == ["Bearer tok-1", "Bearer tok-2"]
    assert all("api-key" not in c.request.headers for c in east.calls)
    assert script.issued == 2


@pytest.mark.anyio
async def test_entra_401_again_after_the_new_token_fails_over_and_is_remembered(
    mock: respx.MockRouter, entra_table: tuple[dict[str, tuple[Target, ...]], Script]
) -> None:
    tables, _ = entra_table
    east = mock.post(EAST).respond(401)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    state = MemoryState()
    recorder = Recorder()
    (status, _), trace = await run(tables["gpt-4o"], state, recorder=recorder)
    assert status == 200
    assert east.call_count == 2 and keys_used(west) == ["west-k1"]  # one retry, then failover
    assert trace.failures[0][1] == "Entra ID token rejected"
    assert "token_rejected" in recorder.failovers
    assert state.key_rejected("east#entra", time.time())
    with pytest.raises(UpstreamKeysRejected) as info:  # remembered: east is not called again
        await run(tables["east-only"], state)
    assert east.call_count == 2
    assert "Cognitive Services OpenAI User" in info.value.message


@pytest.mark.anyio
async def test_entra_resource_without_a_token_is_skipped(
    mock: respx.MockRouter, entra_table: tuple[dict[str, tuple[Target, ...]], Script]
) -> None:
    tables, _ = entra_table
    east = mock.post(EAST).respond(200, json=OK_BODY)
    west = mock.post(WEST).respond(200, json=OK_BODY)
    key = tables["gpt-4o"][0].keys[0]
    assert isinstance(key, EntraKey) and key.source is not None
    key.source._headers = None  # as after a failed start-up fetch
    (status, _), trace = await run(tables["gpt-4o"], MemoryState())
    assert status == 200 and not east.called and west.called
    assert trace.failures[0][1] == "no Entra ID token"
    with pytest.raises(UpstreamFailed) as info:
        await run(tables["east-only"], MemoryState())
    assert info.value.status == 502 and "no Entra ID token" in info.value.message
