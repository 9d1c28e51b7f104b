"""What one caller's connection may hold (app/listener.py), against the real server.

Raw sockets do what a polite HTTP client never would: connect and say nothing,
trickle a head or a body, send a head of megabytes. The gateway runs with small
limits (1 s timeouts, 8 KiB heads) so each case takes about a second.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from app.listener import LINGER, OneWrite
from tests.conftest import GATEWAY_KEY, Gateway, Sim, base_config, launch_gateway, start_sim, stop
from tests.test_callers import chat_head, read_all, rss_kib

LIMITS = {
    "head_timeout": 1.0,
    "body_timeout": 1.0,
    "keep_alive_timeout": 1.0,
    "max_head_bytes": 8192,
    "max_connections": 8,
}
SLACK = 3.0  # the server's timer, then the close reaching us on a loaded machine


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Sim]:
    """A region whose streams take about 2 s: longer than every limit above."""
    sim = start_sim("slowlimits", "--chunk-delay", "0.25")
    yield sim
    stop(sim.proc)


@pytest.fixture(scope="module")
def gw(
    sims: dict[str, Sim], slow_sim: Sim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = base_config(sims)
    config["gateway"] = {**config["gateway"], **LIMITS}
    config["resources"]["slow"] = {"endpoint": slow_sim.url, "keys": ["sim-key-1"]}
    config["models"]["slow-4o"] = ["slow/gpt-4o"]
    gateway = launch_gateway(tmp_path_factory.mktemp("listener"), 0, config)
    yield gateway
    gateway.stop()


def closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sent before closing, and how long after now it closed."""
    started = time.monotonic()
    sock.settimeout(seconds)
    data = read_all(sock)
    return data, time.monotonic() - started


def authed_head(length: int) -> bytes:
    return chat_head(length, f"Authorization: Bearer {GATEWAY_KEY}")


def test_a_connection_that_sends_nothing_is_closed(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        data, took = closed_within(sock, LIMITS["head_timeout"] + SLACK)
    assert data == b"" and took < LIMITS["head_timeout"] + SLACK
    assert "no complete request head in time" in gw.logs()


def test_a_head_trickled_byte_by_byte_is_closed(gw: Gateway) -> None:
    head = authed_head(10)
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        started = time.monotonic()
        closed = False
        for byte in head:  # one byte every 0.1 s: the head would take ~15 s
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        took = time.monotonic() - started
    assert closed and took < LIMITS["head_timeout"] + SLACK, took


def test_a_head_over_the_limit_is_431(gw: Gateway) -> None:
    head = chat_head(2, "X-Padding: " + "a" * 20_000) + b"{}"
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(head)
        data, _ = closed_within(sock, 5)
    status, _, rest = data.partition(b"\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large", data[:200]
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_header_too_large"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_a_50mb_head_is_refused_without_growing_memory(gw: Gateway) -> None:
    before = rss_kib(gw.proc.pid)
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"b" * 65536
        try:
            while sent < 50 * 1024 * 1024:
                sent += sock.send(chunk)
        except OSError:
            pass  # closed after the lingering drain
        answer, took = closed_within(sock, LINGER + SLACK)
    # The 431 is read even though the caller was still sending: the rest was dropped.
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert took < LINGER + SLACK
    assert rss_kib(gw.proc.pid) - before < 20 * 1024


def test_an_idle_keep_alive_connection_is_closed(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        data, took = closed_within(sock, LIMITS["keep_alive_timeout"] + SLACK)
    assert data == b"" and took < LIMITS["keep_alive_timeout"] + SLACK


def test_a_trickled_body_is_cut_off_and_logs_no_traceback(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(authed_head(1000) + b'{"model": "gpt-4o"')
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < LIMITS["body_timeout"] + SLACK:
            try:
                sock.send(b" ")
                sock.settimeout(0.1)
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed, "a body trickled past body_timeout was not cut off"
    assert "the request body took too long" in gw.logs()
    assert "Traceback" not in gw.logs()


def test_a_client_hanging_up_mid_body_logs_no_traceback(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(authed_head(100_000) + b'{"model": "gpt-4o", "messages": [')
    time.sleep(0.3)
    httpx.get(gw.url + "/healthz")  # the gateway is still fine
    logs = gw.logs()
    assert "Traceback" not in logs and "Exception in ASGI application" not in logs


def test_streams_and_keep_alive_outlast_the_timeouts(gw: Gateway) -> None:
    """The limits are on the caller's head and body, never on an answer being relayed."""
    with openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0) as client:
        for _ in range(2):  # the second call reuses the connection
            started = time.monotonic()
            stream = client.chat.completions.create(
                model="slow-4o",
                messages=[{"role": "user", "content": "take your time"}],
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "You said: take your time"
            assert time.monotonic() - started > LIMITS["head_timeout"]
        done = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content == "You said: hi"


def test_over_max_connections_is_an_openai_shaped_503(gw: Gateway) -> None:
    # Held connections count until head_timeout (1 s) closes them; a loaded machine may
    # need another try to fit the whole check in that second.
    for _ in range(3):
        held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(8)]
        try:
            r = httpx.get(gw.url + "/healthz")
        finally:
            for s in held:
                s.close()
        if r.status_code == 503:
            break
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "too_many_connections"
    assert r.headers["retry-after"] == "1"
    time.sleep(0.2)
    assert httpx.get(gw.url + "/healthz").status_code == 200


class _Transport:
    """Records what reaches the socket, one entry per write(2)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


@pytest.mark.anyio
async def test_one_write_sends_a_head_with_its_body_in_one_write() -> None:
    raw = _Transport()
    out = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(HEAD)
    assert raw.writes == []  # held for the body
    out.write(b"{}")
    assert raw.writes == [HEAD + b"{}"]
    out.write(b"more")  # not a head: straight through
    assert raw.writes == [HEAD + b"{}", b"more"]
    assert out.get_extra_info("peername") == "info:peername"  # the rest is the transport's
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert raw.writes == [HEAD + b"{}", b"more"]


@pytest.mark.anyio
async def test_one_write_sends_a_lone_head_on_the_next_loop_turn() -> None:
    raw = _Transport()
    out = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(HEAD)  # a stream waiting for its first event, or HEAD
    await asyncio.sleep(0)
    assert raw.writes == [HEAD]


@pytest.mark.anyio
async def test_one_write_flushes_before_close_and_eof() -> None:
    loop = asyncio.get_running_loop()
    raw = _Transport()
    out = OneWrite(raw, loop)  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
    out.write_eof()
    assert len(raw.writes) == 1 and raw.events == ["eof"]
    raw = _Transport()
    out = OneWrite(raw, loop)  # type: ignore[arg-type]
    out.write(HEAD)
    out.close()
    assert raw.writes == [HEAD] and raw.events == ["close"]
    await asyncio.sleep(0)
    assert raw.writes == [HEAD]  # nothing twice
