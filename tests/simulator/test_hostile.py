"""The misbehaving-upstream fault modes (app/simulator/hostile.py), on a real socket."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from app.simulator import Fault, Simulator
from tests.simulator.serving import serve

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"api-key": "sim-key-1"}


def raw_exchange(base: str, timeout: float = 5.0) -> tuple[bytes, float]:
    """POST a chat request on a raw socket; what came back before the close, and when."""
    port = int(base.rsplit(":", 1)[1])
    body = httpx.Request("POST", base, json=CHAT).read()
    head = (
        f"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\napi-key: sim-key-1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        started = time.monotonic()
        got = b""
        while data := s.recv(65536):
            got += data
        return got, time.monotonic() - started


@pytest.mark.parametrize("delay", [0.0, 0.4])
def test_close_reads_the_request_then_closes_without_a_byte(delay: float) -> None:
    sim = Simulator()
    sim.add_fault(Fault("close", delay=delay))
    with serve(sim) as base:
        got, waited = raw_exchange(base)
    assert got == b""
    assert waited >= delay
    assert sim.recorded_requests()[-1]["body"] == CHAT  # it was read


def test_echo_quotes_the_request_headers_with_the_key() -> None:
    sim = Simulator()
    sim.add_fault(Fault("echo"))
    with serve(sim) as base:
        r = httpx.post(base + "/openai/v1/chat/completions", json=CHAT, headers=HEADERS)
    assert r.status_code == 400
    assert "sim-key-1" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-echo"] == "sim-key-1"


def test_redirect_huge_body_headers_and_line() -> None:
    sim = Simulator()
    for fault in (
        Fault("redirect", count=1),
        Fault("huge_body", size=300_000, count=1),
        Fault("huge_headers", size=40_000, count=1),
        Fault("huge_line", size=200_000, count=1),
    ):
        sim.add_fault(fault)
    url = "/openai/v1/chat/completions"
    with serve(sim) as base, httpx.Client(base_url=base, headers=HEADERS) as c:
        moved = c.post(url, json=CHAT)
        assert moved.status_code == 301 and "elsewhere" in moved.headers["location"]
        big = c.post(url, json=CHAT)
        assert big.status_code == 200 and len(big.content) > 300_000
        assert "content-length" not in big.headers
        assert big.json()["choices"][0]["message"]["content"] == "x" * 300_000
        many = c.post(url, json=CHAT)
        assert sum(n.startswith("x-filler-") for n in many.headers) == 40_000 // 4096
        line = c.post(url, json={**CHAT, "stream": True})
        first, rest = line.content.split(b"\n\n", 1)
        assert len(first) > 200_000 and rest == b"data: [DONE]\n\n"


def test_drip_sends_one_byte_per_delay() -> None:
    sim = Simulator()
    sim.add_fault(Fault("drip", delay=0.01))
    with serve(sim) as base:
        started = time.monotonic()
        r = httpx.post(base + "/openai/v1/chat/completions", json=CHAT, headers=HEADERS)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"
    assert time.monotonic() - started > 0.01 * len(r.content) * 0.8


def test_size_is_validated() -> None:
    with pytest.raises(ValueError, match="size"):
        Fault("huge_body", size=-1)
