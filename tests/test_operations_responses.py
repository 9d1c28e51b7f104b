"""app/operations/responses.py: URLs, parameter hygiene, usage, the event scan."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from app.operations import Place
from app.operations.responses import (
    RESPONSES,
    EventScan,
    event_type,
    failure_events,
    stored_url,
    usage_counts,
)
from app.upstream import StreamBroken


def place(api: str) -> Place:
    return Place("https://x.openai.azure.com", api, "dep", "2024-10-21", "2025-04-01-preview")


def test_create_urls() -> None:
    assert RESPONSES.url(place("v1")) == "https://x.openai.azure.com/openai/v1/responses"
    assert RESPONSES.url(place("legacy")) == (
        "https://x.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
    )


def test_stored_urls_keep_the_query_but_the_api_version() -> None:
    assert stored_url(place("v1"), "resp_1", "", "") == (
        "https://x.openai.azure.com/openai/v1/responses/resp_1"
    )
    assert stored_url(place("v1"), "resp_1", "", "stream=true&starting_after=3") == (
        "https://x.openai.azure.com/openai/v1/responses/resp_1?stream=true&starting_after=3"
    )
    assert stored_url(place("legacy"), "resp_1", "/input_items", "api-version=x&limit=5") == (
        "https://x.openai.azure.com/openai/responses/resp_1/input_items"
        "?api-version=2025-04-01-preview&limit=5"
    )


def rewrite(body: dict[str, object], reasoning: bool) -> dict[str, object]:
    parsed = RESPONSES.parse(orjson.dumps(body), None)
    out: dict[str, object] = orjson.loads(RESPONSES.rewrite(parsed, "dep", reasoning))
    return out


def test_reasoning_deployments_lose_sampling_parameters() -> None:
    body = {
        "model": "o3",
        "input": "hi",
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning": {"effort": "low"},
        "include": ["reasoning.encrypted_content"],
    }
    assert rewrite(body, True) == {
        "model": "dep",
        "input": "hi",
        "reasoning": {"effort": "low"},
        "include": ["reasoning.encrypted_content"],
    }


def test_other_deployments_lose_reasoning_only_fields() -> None:
    body = {
        "model": "gpt-4o",
        "input": "hi",
        "temperature": 0.2,
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content", "file_search_call.results"],
    }
    assert rewrite(body, False) == {
        "model": "dep",
        "input": "hi",
        "temperature": 0.2,
        "include": ["file_search_call.results"],
    }
    alone = rewrite({"model": "m", "input": "x", "include": ["reasoning.encrypted_content"]}, False)
    assert alone == {"model": "dep", "input": "x"}


def test_store_and_previous_response_id() -> None:
    parsed = RESPONSES.parse(b'{"model": "m", "input": "x", "previous_response_id": "r1"}', None)
    assert (RESPONSES.stores(parsed), RESPONSES.stored_id(parsed)) == (True, "r1")
    parsed = RESPONSES.parse(b'{"model": "m", "input": "x", "store": false}', None)
    assert (RESPONSES.stores(parsed), RESPONSES.stored_id(parsed)) == (False, None)


USAGE = {
    "input_tokens": 11,
    "output_tokens": 7,
    "total_tokens": 18,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens_details": {"reasoning_tokens": 5},
}
COUNTS = {"prompt_tokens": 11, "completion_tokens": 7, "cached_tokens": 4, "reasoning_tokens": 5}


def test_usage_of_a_whole_answer() -> None:
    facts = RESPONSES.facts(orjson.dumps({"id": "resp_9", "object": "response", "usage": USAGE}))
    assert (facts.response_id, facts.tokens) == ("resp_9", COUNTS)
    assert usage_counts({"input_tokens": -1, "output_tokens": True}) == {}


def event(kind: str, seq: int, **data: object) -> bytes:
    payload = {"type": kind, "sequence_number": seq, **data}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def stream(text_events: int = 20, terminal: str = "response.completed") -> bytes:
    response = {"id": "resp_42", "object": "response", "status": "in_progress"}
    out = [event("response.created", 0, response=response)]
    out += [
        event("response.output_text.delta", i + 1, delta=f"word {i} ", item_id="msg_1")
        for i in range(text_events)
    ]
    done = {**response, "status": "completed", "usage": USAGE, "output": [{"x": "y" * 500}]}
    out.append(event(terminal, text_events + 1, response=done))
    return b"".join(out)


def feed_all(scan: EventScan, data: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in [*cuts, len(data)]:
        out.append(scan.feed(data[last:cut]))
        last = cut
    out.append(scan.close())
    return b"".join(out)


@pytest.mark.parametrize("seed", range(30))
def test_scan_relays_every_byte_and_reads_id_and_usage_however_reads_split(seed: int) -> None:
    data = stream()
    if seed % 3 == 0:
        data = data.replace(b"\n", b"\r\n")
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 60)))
    scan = EventScan()
    assert feed_all(scan, data, cuts) == data.replace(b"\r", b"")  # whole events, as sent
    assert scan.response_id == "resp_42"
    assert scan.done
    assert scan.tokens() == COUNTS
    assert scan.events == 22


@pytest.mark.parametrize("terminal", ["response.incomplete", "response.failed"])
def test_other_terminal_events_end_the_stream_too(terminal: str) -> None:
    scan = EventScan()
    scan.feed(stream(3, terminal))
    assert scan.done
    assert scan.tokens() == COUNTS


def test_events_without_an_event_line_are_read_from_their_type() -> None:
    data = b"".join(
        b"data: " + line.split(b"data: ", 1)[1] for line in stream(2).split(b"event: ")[1:]
    )
    scan = EventScan()
    scan.feed(data)
    assert (scan.response_id, scan.done, scan.tokens()) == ("resp_42", True, COUNTS)
    assert event_type(b'data: {"type":"response.created","x":1}') == b"response.created"
    assert event_type(b"data: [DONE]") is None


def test_a_stream_without_its_terminal_event_is_not_done() -> None:
    scan = EventScan()
    data = stream(5)
    scan.feed(data[: data.rindex(b"event: response.completed")])
    scan.close()
    assert scan.response_id == "resp_42"
    assert not scan.done
    assert scan.tokens() == {}


def test_broken_stream_ends_with_error_and_response_failed_carrying_the_id() -> None:
    scan = EventScan()
    data = stream(5)
    scan.feed(data[: data.rindex(b"event: response.completed")])
    events = scan.broken("upstream went away").split(b"\n\n")
    assert events[0].startswith(b"event: error\ndata: ")
    error = orjson.loads(events[0].split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["message"] == "upstream went away"  # openai-python raises on it
    assert error["sequence_number"] == 6
    assert events[1].startswith(b"event: response.failed\ndata: ")
    failed = orjson.loads(events[1].split(b"data: ", 1)[1])
    assert failed["response"]["id"] == "resp_42"
    assert failed["response"]["status"] == "failed"
    assert failed["sequence_number"] == 7


def test_broken_before_the_id_is_known_sends_only_the_error() -> None:
    out = failure_events("gone", None, 0)
    assert out.count(b"event: ") == 1


def test_an_endless_event_breaks_the_stream() -> None:
    scan = EventScan()
    scan.feed(b"event: response.completed\ndata: {")
    with pytest.raises(StreamBroken):
        for _ in range(20):
            scan.feed(b"x" * (1024 * 1024))


def test_scan_cost_is_linear_in_the_bytes() -> None:
    """One 8 MB terminal event in 4 KB reads: each read is looked at once."""
    big = event("response.completed", 1, response={"id": "r", "usage": USAGE, "o": "z" * 8_000_000})
    scan = EventScan()
    started = time.perf_counter()
    for i in range(0, len(big), 4096):
        scan.feed(big[i : i + 4096])
    took = time.perf_counter() - started
    assert scan.done and scan.tokens() == COUNTS
    assert took < 2.0, took
