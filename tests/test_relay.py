"""app/relay.py: the SSE filter on bytes, usage capture, token counts."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import orjson
import pytest

from app.relay import SSEFilter, error_event, token_counts, usage_of
from app.upstream import StreamBroken

# Azure-shaped events (each ends with its blank line).
PROMPT_FILTER = (
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":'
    b'[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}'
    b"\n\n"
)
ROLE = (
    b'data: {"choices":[{"content_filter_results":{},"delta":{"content":"","role":"assistant"},'
    b'"finish_reason":null,"index":0}],"created":1,"id":"c1","model":"gpt-4o",'
    b'"object":"chat.completion.chunk"}\n\n'
)


def content(text: str, index: int = 0) -> bytes:
    choice = {
        "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
        "delta": {"content": text},
        "finish_reason": None,
        "index": index,
    }
    chunk = {"choices": [choice], "id": "c1", "object": "chat.completion.chunk"}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


ANNOTATION = (
    b'data: {"choices":[{"content_filter_offsets":{"check_offset":0,"start_offset":0,'
    b'"end_offset":9},"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},'
    b'"finish_reason":null,"index":0}],"created":0,"id":"","model":"","object":""}\n\n'
)
FINISH = (
    b'data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop",'
    b'"index":0}],"created":1,"id":"c1","model":"gpt-4o","object":"chat.completion.chunk"}\n\n'
)
USAGE_OBJ = {
    "completion_tokens": 5,
    "prompt_tokens": 9,
    "total_tokens": 14,
    "prompt_tokens_details": {"cached_tokens": 2},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
USAGE = (
    b'data: {"choices":[],"created":1,"id":"c1","model":"gpt-4o","object":"chat.completion.chunk",'
    b'"usage":' + orjson.dumps(USAGE_OBJ) + b"}\n\n"
)
DONE = b"data: [DONE]\n\n"

WORDS = ["He", "llo", ' "delta" ', "wor\\nld", "💥", "!"]
NORMAL = [ROLE, *(content(w) for w in WORDS), FINISH]
STREAM = PROMPT_FILTER + ROLE + b"".join(content(w) for w in WORDS[:3]) + ANNOTATION
STREAM += b"".join(content(w) for w in WORDS[3:]) + FINISH + ANNOTATION + USAGE + DONE
EXPECTED = b"".join(NORMAL) + DONE
EXPECTED_WITH_USAGE = b"".join(NORMAL) + USAGE + DONE


def feed_all(parts: list[bytes], forward_usage: bool = False) -> tuple[bytes, SSEFilter]:
    sse = SSEFilter(forward_usage=forward_usage)
    out = b"".join(sse.feed(p) for p in parts)
    return out, sse


def events(data: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


def test_prompt_filter_only_first_chunk_is_dropped() -> None:
    sse = SSEFilter(forward_usage=False)
    assert sse.feed(PROMPT_FILTER) == b""
    assert sse.feed(ROLE) == ROLE


def test_annotation_only_chunks_are_dropped() -> None:
    sse = SSEFilter(forward_usage=False)
    assert sse.feed(ANNOTATION) == b""
    assert sse.feed(content("x") + ANNOTATION + content("y")) == content("x") + content("y")


def test_normal_chunks_are_byte_identical() -> None:
    sse = SSEFilter(forward_usage=False)
    for event in NORMAL:
        assert sse.feed(event) == event
    assert sse.usage is None and not sse.done


def test_usage_chunk_is_captured_and_forwarded_only_when_asked() -> None:
    out, sse = feed_all([STREAM], forward_usage=False)
    assert sse.model == "gpt-4o"  # the model that answered, for pricing
    assert out == EXPECTED
    assert sse.usage == USAGE_OBJ
    out, sse = feed_all([STREAM], forward_usage=True)
    assert out == EXPECTED_WITH_USAGE
    assert sse.usage == USAGE_OBJ


def test_done_sets_done() -> None:
    sse = SSEFilter(forward_usage=False)
    assert sse.feed(FINISH) == FINISH
    assert not sse.done
    assert sse.feed(DONE) == DONE
    assert sse.done


def test_one_event_per_read() -> None:
    out, sse = feed_all(events(STREAM))
    assert out == EXPECTED
    assert sse.done and sse.usage == USAGE_OBJ


@pytest.mark.parametrize("forward_usage", [False, True])
def test_any_single_split_point(forward_usage: bool) -> None:
    expected = EXPECTED_WITH_USAGE if forward_usage else EXPECTED
    for cut in range(len(STREAM) + 1):
        out, sse = feed_all([STREAM[:cut], STREAM[cut:]], forward_usage)
        assert out == expected, cut
        assert sse.done and sse.usage == USAGE_OBJ, cut


def test_any_two_split_points_around_every_event_boundary() -> None:
    boundaries = [i + 2 for i in range(len(STREAM)) if STREAM.startswith(b"\n\n", i)]
    for b in boundaries:
        for i in range(max(0, b - 4), min(len(STREAM), b + 3)):
            for j in range(i, min(len(STREAM), i + 5) + 1):
                out, sse = feed_all([STREAM[:i], STREAM[i:j], STREAM[j:]])
                assert out == EXPECTED, (i, j)
                assert sse.done


def random_splits(data: bytes, seed: int, times: int) -> Iterator[list[bytes]]:
    rng = random.Random(seed)
    for _ in range(times):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_random_multi_splits_and_byte_by_byte() -> None:
    for parts in random_splits(STREAM, seed=7, times=300):
        out, sse = feed_all(parts)
        assert out == EXPECTED, [len(p) for p in parts]
        assert sse.done and sse.usage == USAGE_OBJ
    out, sse = feed_all([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert out == EXPECTED and sse.done


def test_crlf_input_at_any_split_point() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    expected = EXPECTED  # events leave with LF line ends
    out, sse = feed_all([crlf])
    assert out == expected and sse.done and sse.usage == USAGE_OBJ
    for cut in range(len(crlf) + 1):
        out, sse = feed_all([crlf[:cut], crlf[cut:]])
        assert out == expected, cut
        assert sse.done, cut
    for parts in random_splits(crlf, seed=11, times=200):
        out, sse = feed_all(parts)
        assert out == expected, [len(p) for p in parts]
        assert sse.done


def test_multi_choice_chunks_with_a_prompt_filter_chunk_in_the_same_read() -> None:
    n2 = [content("a", 0), content("b", 1), content("c", 1), content("d", 0)]
    read = PROMPT_FILTER + n2[0] + n2[1]
    sse = SSEFilter(forward_usage=False)
    assert sse.feed(read) == n2[0] + n2[1]
    assert sse.feed(n2[2] + ANNOTATION + n2[3] + DONE) == n2[2] + n2[3] + DONE
    assert sse.done


def test_error_events_and_comments_pass_through() -> None:
    err = b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'
    comment = b": keep-alive\n\n"
    not_json = b"data: not json\n\n"
    sse = SSEFilter(forward_usage=False)
    assert sse.feed(err + comment + not_json) == err + comment + not_json


def test_incomplete_event_is_held_back() -> None:
    sse = SSEFilter(forward_usage=False)
    assert sse.feed(ROLE[:-1]) == b""
    assert sse.feed(ROLE[-1:]) == ROLE


def test_error_event_shape() -> None:
    event = error_event("the upstream failed", "upstream_stream_error")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:]) == {
        "error": {
            "message": "the upstream failed",
            "type": "server_error",
            "param": None,
            "code": "upstream_stream_error",
        }
    }


# --- non-streamed usage ------------------------------------------------------------


def test_usage_of() -> None:
    body = orjson.dumps({"id": "c", "model": "gpt-4o-2024-11-20", "usage": USAGE_OBJ})
    assert usage_of(body) == (USAGE_OBJ, "gpt-4o-2024-11-20")
    assert usage_of(b'{"id": "c"}') == (None, None)
    assert usage_of(b'{"usage": null, "model": ""}') == (None, None)
    assert usage_of(b'{"usage": 5, "model": 3}') == (None, None)
    assert usage_of(b"[1, 2]") == (None, None)
    assert usage_of(b"not json") == (None, None)
    assert usage_of(b"") == (None, None)


def test_token_counts() -> None:
    assert token_counts(USAGE_OBJ) == {
        "prompt_tokens": 9,
        "completion_tokens": 5,
        "cached_tokens": 2,
        "reasoning_tokens": 3,
    }
    assert token_counts({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
    }
    assert (
        token_counts(
            {
                "prompt_tokens": "3",
                "completion_tokens": None,
                "prompt_tokens_details": None,
                "completion_tokens_details": {"reasoning_tokens": "x"},
            }
        )
        == {}
    )
    assert token_counts({"prompt_tokens": True, "completion_tokens": 1.5}) == {}
    assert token_counts({"prompt_tokens": -1, "completion_tokens": 0}) == {"completion_tokens": 0}


def test_last_event_without_blank_line_is_kept_at_close() -> None:
    f = SSEFilter(forward_usage=False)
    out = f.feed(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: [DONE]')
    assert out == b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    assert not f.done
    assert f.close() == b"data: [DONE]\n\n"
    assert f.done
    assert f.close() == b""


def test_a_long_line_costs_time_linear_in_its_bytes() -> None:
    """Issue 10: a 50 MB line arriving in 64 KiB reads was re-joined and re-scanned on
    every read (2.8 s of CPU). Each byte is now scanned a bounded number of times."""
    read = b"x" * 65536
    reads = 50 * 1024 * 1024 // len(read)
    sse = SSEFilter(forward_usage=False, max_event=64 * 1024 * 1024)
    started = time.process_time()
    assert sse.feed(b"data: ") == b""
    for _ in range(reads):
        assert sse.feed(read) == b""
    event = sse.feed(b"\n\n")
    spent = time.process_time() - started
    assert len(event) == 6 + reads * len(read) + 2
    assert spent < 1.0, f"{spent:.2f}s of CPU for one 50 MB line"


def test_an_event_larger_than_max_event_breaks_the_stream() -> None:
    sse = SSEFilter(forward_usage=False, max_event=1000)
    assert sse.feed(content("a")) == content("a")
    sse.feed(b"data: " + b"y" * 600)
    with pytest.raises(StreamBroken, match="larger than 1000 bytes"):
        sse.feed(b"y" * 600)
    whole = SSEFilter(forward_usage=False, max_event=1000)
    with pytest.raises(StreamBroken):
        whole.feed(b"data: " + b"z" * 2000)  # one read, no blank line: held, too big


def test_an_event_up_to_max_event_passes() -> None:
    event = content("b" * 900)
    sse = SSEFilter(forward_usage=False, max_event=len(event))
    assert sse.feed(event[:500]) == b""
    assert sse.feed(event[500:]) == event


def test_deltas_count_the_content_chunks_forwarded() -> None:
    out, sse = feed_all([STREAM[i : i + 7] for i in range(0, len(STREAM), 7)])
    assert out == EXPECTED
    assert sse.deltas == len(NORMAL)
