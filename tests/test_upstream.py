"""Limits on upstream answers, held alike by both gateway clients (`H1Upstream` and
`AiohttpUpstream`), against the raw servers of tests/test_h1.py (issue 10, item 7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app.h1 import H1Upstream
from app.upstream import (
    MAX_FIELD,
    MAX_HEADERS,
    AiohttpUpstream,
    ConnectFailed,
    Outcome,
    StreamBroken,
    Timeouts,
    Upstream,
    body_bytes,
    body_size,
    classify,
)
from tests.test_h1 import Peer, chunked, hold, response, serve

T = Timeouts(connect=5.0, read=5.0, max_body=10_000)
CLIENTS: dict[str, Callable[[], Upstream]] = {"h1": H1Upstream, "aiohttp": AiohttpUpstream}


@pytest.fixture
def anyio_backend() -> Any:
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(params=sorted(CLIENTS))
def make(request: pytest.FixtureRequest) -> Callable[[], Upstream]:
    return CLIENTS[request.param]


@asynccontextmanager
async def client(make: Callable[[], Upstream]) -> AsyncIterator[Upstream]:
    up = make()
    try:
        yield up
    finally:
        await up.aclose()


def answer(raw: bytes) -> Callable[[Peer], Any]:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(raw)
        await hold(peer)

    return handler


async def read(up: Upstream, url: str, timeout: Timeouts = T) -> bytes:
    resp = await up.request("POST", url, {"api-key": "k"}, b"{}", timeout=timeout)
    try:
        return await resp.read()
    finally:
        await resp.aclose()


def test_3xx_is_a_redirect_outcome() -> None:
    assert [classify(s) for s in (200, 301, 302, 307, 308, 400)] == [
        Outcome.OK,
        *[Outcome.REDIRECT] * 4,
        Outcome.CLIENT_ERROR,
    ]


@pytest.mark.anyio
async def test_a_redirect_is_returned_not_followed(make: Callable[[], Upstream]) -> None:
    async with serve(answer(b"")) as target:
        moved = response(301, b"moved", (("Location", target.url()),), reason="Moved")
        async with serve(answer(moved)) as srv, client(make) as up:
            resp = await up.request("POST", srv.url(), {"api-key": "k"}, b"{}", timeout=T)
            assert resp.status == 301
            await resp.aclose()
        assert target.peers == []  # the api-key never went to the Location


@pytest.mark.anyio
async def test_too_many_headers_fail_the_attempt(make: Callable[[], Upstream]) -> None:
    many = tuple((f"x-h{i}", "v") for i in range(MAX_HEADERS + 1))
    async with serve(answer(response(200, b"{}", many))) as srv, client(make) as up:
        with pytest.raises(ConnectFailed):
            await read(up, srv.url())


@pytest.mark.anyio
async def test_a_header_over_the_field_limit_fails_the_attempt(
    make: Callable[[], Upstream],
) -> None:
    long = (("x-long", "v" * (MAX_FIELD + 10)),)
    async with serve(answer(response(200, b"{}", long))) as srv, client(make) as up:
        with pytest.raises(ConnectFailed):
            await read(up, srv.url())


@pytest.mark.anyio
async def test_headers_up_to_the_limits_pass(make: Callable[[], Upstream]) -> None:
    fine = (*((f"x-h{i}", "v") for i in range(MAX_HEADERS - 10)), ("x-long", "v" * 8000))
    async with serve(answer(response(200, b"{}", fine))) as srv, client(make) as up:
        assert await read(up, srv.url()) == b"{}"


@pytest.mark.anyio
async def test_a_huge_head_is_cut_without_buffering_it(make: Callable[[], Upstream]) -> None:
    """Issue 10: 100k upstream headers were kept. The server sends header lines
    without end; the client gives up after about a megabyte."""
    sent = 0

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        line = b"x-h: " + b"v" * 4000 + b"\r\n"
        while sent < 50 * 1024 * 1024:
            await peer.send(line * 16)
            sent += len(line) * 16

    async with serve(handler) as srv, client(make) as up:
        with pytest.raises(ConnectFailed):
            await read(up, srv.url())
    assert sent < 8 * 1024 * 1024


@pytest.mark.anyio
async def test_a_declared_body_over_max_body_fails_at_once(make: Callable[[], Upstream]) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 600000000\r\n\r\n" + b"x" * 100
    async with serve(answer(head)) as srv, client(make) as up:
        started = time.monotonic()
        with pytest.raises(StreamBroken, match="over the 10000-byte limit"):
            await read(up, srv.url())
        assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_a_chunked_body_growing_over_max_body_fails(make: Callable[[], Upstream]) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            await peer.send(b"%x\r\n%s\r\n" % (4096, b"y" * 4096))
        await hold(peer)

    async with serve(handler) as srv, client(make) as up:
        with pytest.raises(StreamBroken, match="limit"):
            await read(up, srv.url())


@pytest.mark.anyio
async def test_a_body_at_max_body_passes(make: Callable[[], Upstream]) -> None:
    body = b"z" * T.max_body
    async with serve(answer(chunked(body[:5000], body[5000:]))) as srv, client(make) as up:
        assert await read(up, srv.url()) == body


@pytest.mark.anyio
async def test_a_dripping_body_ends_at_the_total_deadline(make: Callable[[], Upstream]) -> None:
    """Issue 10: a body dripping a byte at a time never timed out (no gap was long
    enough). A body read whole must be complete within `read` seconds of its head."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            await peer.send(b"x")
            await asyncio.sleep(0.05)

    async with serve(handler) as srv, client(make) as up:
        started = time.monotonic()
        with pytest.raises(StreamBroken, match=r"not complete within 0\.6s"):
            await read(up, srv.url(), Timeouts(connect=5.0, read=0.6, max_body=10_000))
        assert 0.5 < time.monotonic() - started < 2.5


@pytest.mark.anyio
async def test_a_request_dropped_after_the_write_is_a_failure_not_resent(
    make: Callable[[], Upstream],
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=b"first"))
        await peer.request()  # read, then closed without a byte

    async with serve(handler) as srv, client(make) as up:
        assert await read(up, srv.url("/1")) == b"first"
        with pytest.raises(ConnectFailed):
            await read(up, srv.url("/2"))
    assert sum(len(p.requests) for p in srv.peers) == 2


def test_a_body_in_pieces_is_sized_and_joined_without_changing_a_byte() -> None:
    upload = b"--b\r\n" + bytes(range(256)) * 300
    pieces = (memoryview(upload)[:10], b"whisper", memoryview(upload)[14:])
    assert body_size(pieces) == len(upload) - 4 + 7
    assert body_bytes(pieces) == upload[:10] + b"whisper" + upload[14:]
    assert body_bytes(upload) is upload and body_size(upload) == len(upload)
