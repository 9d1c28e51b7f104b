"""Graceful shutdown: SIGTERM stops accepting, lets streams finish within `--grace`, exits."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, SIM_KEYS, Sim, start_sim, stop

FULL = "You said: take your time"


@pytest.fixture(scope="module")
def slow() -> Iterator[Sim]:
    """Streams of 8 chunks, 0.4 s apart: about 3 s each."""
    sim = start_sim("slow", "--chunk-delay", "0.4")
    yield sim
    stop(sim.proc)


@pytest.fixture(scope="module")
def slower() -> Iterator[Sim]:
    """Streams of 8 chunks, 1 s apart: far longer than a 1 s grace period."""
    sim = start_sim("slower", "--chunk-delay", "1.0")
    yield sim
    stop(sim.proc)


def config_for(sim: Sim) -> dict[str, Any]:
    return {
        "gateway": {"keys": [{"name": "alice", "key": GATEWAY_KEY}]},
        "resources": {"slow": {"endpoint": sim.url, "keys": list(SIM_KEYS)}},
        "models": {"gpt-4o": ["slow/gpt-4o"]},
    }


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    return False


def assert_clean_exit(gw: Any) -> None:
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete, so the
    # process ends "by SIGTERM" (exit 143 in a container), as a supervisor expects.
    assert gw.proc.returncode in (0, -signal.SIGTERM)
    logs = gw.logs()
    assert "Application shutdown complete" in logs  # lifespan ran: usage flushed, clients closed
    assert "Finished server process" in logs


def stream_and_terminate(gw: Any) -> tuple[str, bool, bool, float]:
    """Stream a chat, SIGTERM the gateway after the first content chunk.

    Returns (text received, stream ended cleanly with [DONE], new connections were
    refused while the stream was still running, seconds from SIGTERM to exit).
    """
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "take your time"}],
    }
    text, done, refused_during, sent_at = "", False, False, 0.0
    with httpx.stream(
        "POST", gw.base_url + "/chat/completions", json=body, headers=gw.headers(), timeout=30
    ) as r:
        assert r.status_code == 200
        try:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                piece = (
                    chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""
                )
                text += piece
                if piece and not sent_at:
                    gw.send_signal(signal.SIGTERM)
                    sent_at = time.monotonic()
                elif sent_at and not refused_during:
                    refused_during = refused(gw.url)
        except httpx.RemoteProtocolError:
            pass  # cut at the end of the grace period
    gw.proc.wait(30)
    return text, done, refused_during, time.monotonic() - sent_at


def test_sigterm_lets_a_stream_in_flight_finish_then_exits(slow: Sim, start_gateway: Any) -> None:
    slow.reset()
    gw = start_gateway(config_for(slow), "--grace", "20")
    text, done, refused_during, _ = stream_and_terminate(gw)
    assert text == FULL and done, "the stream in flight was cut by SIGTERM"
    assert refused_during, "the gateway kept accepting connections after SIGTERM"
    assert_clean_exit(gw)
    logs = gw.logs()
    assert "Traceback" not in logs and "ERROR" not in logs
    assert '"status":200' in logs  # the access line of the finished stream


def test_the_grace_period_bounds_the_wait(slower: Sim, start_gateway: Any) -> None:
    gw = start_gateway(config_for(slower), "--grace", "1")
    text, done, _, exit_after = stream_and_terminate(gw)
    assert not done and len(text) < len(FULL)  # cut: the stream needed ~7 s more
    assert exit_after < 5, f"exited {exit_after:.1f} s after SIGTERM with a 1 s grace"
    assert_clean_exit(gw)
