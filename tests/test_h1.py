"""H1Upstream (app/h1.py) against raw servers that write exact bytes, and the simulator.

Each raw server is an `asyncio.start_server` whose handler reads requests and
writes exactly the bytes a test needs, so framing, pauses, closes and garbage
are under the test's control. Every async test runs on the standard asyncio
loop and on uvloop (what uvicorn runs the gateway on).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import trustme

from app import h1
from app.h1 import H1Upstream
from app.upstream import ConnectFailed, Response, StreamBroken, TimedOut, Timeouts
from tests.conftest import SIM_KEYS, Sim, free_port

T = Timeouts(connect=5.0, read=5.0)


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


# --- a raw HTTP server ------------------------------------------------------------------


@dataclass
class Req:
    line: str
    headers: dict[str, str]
    raw_head: bytes
    body: bytes


@dataclass
class Peer:
    """One accepted connection, seen from the server."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Req] = field(default_factory=list)

    async def request(self) -> Req | None:
        """The next request, or None if the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1)
                assert name.lower() not in headers, f"header {name} sent twice"
                headers[name.lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        req = Req(lines[0], headers, head, body)
        self.requests.append(req)
        return req

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_split(self, data: bytes, size: int, gap: float = 0.002) -> None:
        """Write `data` in pieces of `size` bytes, pausing so they arrive as separate reads."""
        for i in range(0, len(data), size):
            await self.send(data[i : i + size])
            await asyncio.sleep(gap)

    async def client_closed(self, timeout: float = 5.0) -> bool:
        """Whether the client closes (FIN or RST) the connection within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler, tls: ssl.SSLContext | None) -> None:
        self.handler = handler
        self.tls = tls
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    def url(self, path: str = "/openai/v1/chat/completions", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except BaseException as exc:  # an assertion in a handler fails the test
            self.errors.append(exc)
        finally:
            writer.transport.abort()


@asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    srv = Server(handler, tls)
    server = await asyncio.start_server(srv._accept, "127.0.0.1", 0, ssl=tls)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        for task in list(srv._tasks):
            task.cancel()
        await asyncio.gather(*srv._tasks, return_exceptions=True)
        await server.wait_closed()
    if srv.errors:
        raise srv.errors[0]


@asynccontextmanager
async def client(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[H1Upstream]:
    up = H1Upstream(ssl_context)
    try:
        yield up
    finally:
        await up.aclose()


def response(
    status: int = 200,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    reason: str = "OK",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{version} {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*parts: bytes, head: bytes = b"HTTP/1.1 200 OK\r\n") -> bytes:
    out = head + b"Transfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    for part in parts:
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


async def keep_alive(peer: Peer, reply: bytes = b"") -> None:
    """Answer every request on this connection with 200 and `reply` (default: its path)."""
    while (req := await peer.request()) is not None:
        await peer.send(response(body=reply or req.line.encode()))


async def hold(peer: Peer) -> None:
    await asyncio.Event().wait()


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def call(
    up: H1Upstream,
    url: str,
    body: bytes = b"{}",
    timeout: Timeouts = T,
    headers: dict[str, str] | None = None,
) -> bytes:
    resp = await up.request("POST", url, headers or {"api-key": "k"}, body, timeout=timeout)
    try:
        return await resp.read()
    finally:
        await resp.aclose()


def pooled(up: H1Upstream) -> int:
    return sum(len(idle) for idle in up._idle.values())


def conn_of(resp: Response) -> h1._Conn:
    conn = resp._conn  # type: ignore[attr-defined]
    assert isinstance(conn, h1._Conn)
    return conn


# --- the request on the wire ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("size", [2, 1024 * 1024])
async def test_request_line_headers_and_body_on_the_wire(size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    async with serve(keep_alive) as srv, client() as up:
        url = srv.url("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&x=1")
        headers = {"api-key": "secret", "content-type": "application/json"}
        resp = await up.request("POST", url, headers, body, timeout=T)
        assert resp.status == 200
        await resp.aclose()
    [req] = srv.peers[0].requests
    path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&x=1"
    assert req.line == f"POST {path} HTTP/1.1"
    assert req.headers["host"] == f"127.0.0.1:{srv.port}"
    assert req.headers["api-key"] == "secret"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["content-length"] == str(size)
    assert req.headers["accept-encoding"] == "identity"
    assert req.body == body


def test_host_header_omits_default_ports_and_brackets_ipv6() -> None:
    up = H1Upstream()
    r = "r.openai.azure.com"
    cases = [
        (f"https://{r}/openai/v1/x", ("https", r, 443), r),
        (f"https://{r}:8443/x?a=b", ("https", r, 8443), f"{r}:8443"),
        ("http://h:80/x", ("http", "h", 80), "h"),
        ("http://h:443/x", ("http", "h", 443), "h:443"),
        ("http://[::1]:8080/x", ("http", "::1", 8080), "[::1]:8080"),
        ("https://[::1]/x", ("https", "::1", 443), "[::1]"),
    ]
    for url, origin, host in cases:
        got_origin, prefix = up._target(url)
        assert got_origin == origin, url
        assert prefix.split(b"\r\n")[1] == f"host: {host}".encode(), url
    assert up._target("http://h/")[1].startswith(b"POST / HTTP/1.1\r\n")
    assert up._target("http://h")[1].startswith(b"POST / HTTP/1.1\r\n")
    assert up._target("http://h/p?q=1&r=%20")[1].startswith(b"POST /p?q=1&r=%20 HTTP/1.1\r\n")


# --- responses ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 429, 500])
async def test_content_length_response_status_headers_and_body(status: int) -> None:
    payload = b'{"error": {"code": "x"}}' if status != 200 else b'{"id": "chatcmpl-1"}'

    async def handler(peer: Peer) -> None:
        await peer.request()
        extra = (
            ("X-Request-ID", "abc"),
            ("Content-Type", "application/json"),
            ("Retry-After", "7"),
        )
        await peer.send(response(status, payload, extra, reason="Whatever"))
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert resp.status == status
        assert resp.headers["x-request-id"] == "abc"
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["retry-after"] == "7"
        assert "X-Request-ID" not in resp.headers
        assert await resp.read() == payload
        await resp.aclose()


SSE = [b'data: {"n": %d, "pad": "%s"}\n\n' % (i, b"x" * (i * 7 % 40)) for i in range(12)]


@pytest.mark.anyio
@pytest.mark.parametrize("piece", [1, 5, 64])
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_chunked_body_split_across_writes(piece: int, mode: str) -> None:
    raw = chunked(*SSE)

    async def handler(peer: Peer) -> None:
        await peer.request()
        if piece == 1:
            # every byte of the head and of the first chunks alone, the rest in 5s
            await peer.send_split(raw[:200], 1, gap=0.0005)
            await peer.send_split(raw[200:], 5)
        else:
            await peer.send_split(raw, piece)
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert resp.status == 200
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.headers["content-type"] == "text/event-stream"
        if mode == "read":
            body = await resp.read()
        else:
            got = [data async for data in resp.chunks()]
            assert all(got), "an empty chunk was yielded"
            body = b"".join(got)
        assert body == b"".join(SSE)
        await resp.aclose()
        assert pooled(up) == 1  # the chunked message ended: the connection is reusable


@pytest.mark.anyio
async def test_chunks_are_yielded_as_they_arrive() -> None:
    proceed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        raw = chunked(b"first", b"second")
        first_end = raw.index(b"first") + len(b"first\r\n")
        await peer.send(raw[:first_end])
        await proceed.wait()  # the rest only once the client got the first chunk
        await peer.send(raw[first_end:])
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        stream = resp.chunks()
        assert await anext(stream) == b"first"
        proceed.set()
        assert [data async for data in stream] == [b"second"]
        await resp.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_body_delimited_by_close_completes_at_eof(version: str, mode: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(f"{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode())
        await peer.send_split(b"until the server closes", 4)
        peer.writer.close()

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        if mode == "read":
            body = await resp.read()
        else:
            body = b"".join([data async for data in resp.chunks()])
        assert body == b"until the server closes"
        await resp.aclose()
        assert pooled(up) == 0


@pytest.mark.anyio
async def test_body_delimited_by_close_cut_by_the_client_is_not_complete() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\npart of it")
        await hold(peer)

    async with serve(handler) as srv:
        up = H1Upstream()
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        reading = asyncio.create_task(resp.read())
        await eventually(lambda: conn_of(resp).waiter is not None)  # the part is taken
        await up.aclose()  # our own close is not the server's end of the body
        with pytest.raises(StreamBroken, match="connection closed"):
            await reading


@pytest.mark.anyio
async def test_informational_responses_are_skipped() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
        await peer.send(response(201, b"made", (("X-Final", "yes"),)))
        await keep_alive(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert resp.status == 201
        assert resp.headers["x-final"] == "yes"
        assert "link" not in resp.headers
        assert await resp.read() == b"made"
        await resp.aclose()
        assert await call(up, srv.url("/second")) == b"POST /second HTTP/1.1"
    assert len(srv.peers) == 1


# --- keep-alive -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_keep_alive_reuses_one_connection(mode: str) -> None:
    async def handler(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            await peer.send(chunked(req.line.encode(), b"!"))

    async with serve(handler) as srv, client() as up:
        for path in ("/a", "/b", "/c"):
            resp = await up.request("POST", srv.url(path), {}, b"{}", timeout=T)
            if mode == "read":
                body = await resp.read()
            else:
                body = b"".join([data async for data in resp.chunks()])
            await resp.aclose()
            assert body == f"POST {path} HTTP/1.1!".encode()
    assert len(srv.peers) == 1
    assert [r.line for r in srv.peers[0].requests] == [
        "POST /a HTTP/1.1",
        "POST /b HTTP/1.1",
        "POST /c HTTP/1.1",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first",
    [
        response(body=b"one", headers=(("Connection", "close"),)),
        response(body=b"one", version="HTTP/1.0"),
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_close_response_is_not_reused(first: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(first if peer.index == 0 else response(body=b"two"))
        await hold(peer)  # and leave it open: the client must not reuse the first one

    async with serve(handler) as srv, client() as up:
        assert await call(up, srv.url()) == b"one"
        assert pooled(up) == 0
        assert await srv.peers[0].client_closed()
        assert await call(up, srv.url()) == b"two"
    assert len(srv.peers) == 2


@pytest.mark.anyio
async def test_idle_connection_closed_by_server_is_not_used() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=b"ok"))
        if peer.index == 0:
            peer.writer.close()  # an idle keep-alive connection the server closes
            return
        await keep_alive(peer)

    async with serve(handler) as srv, client() as up:
        assert await call(up, srv.url()) == b"ok"
        await eventually(lambda: all(c.lost for idle in up._idle.values() for c in idle))
        assert await call(up, srv.url()) == b"ok"
    assert len(srv.peers) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("delay", [0.0, 0.3])
async def test_request_dropped_after_the_write_on_a_reused_connection_is_not_resent(
    delay: float,
) -> None:
    """The server reads a request on a reused connection, then closes it without a
    byte (at once or later): it may have processed it, so it is a failed attempt and
    never sent again (issue 10: 5 client requests became 10 upstream POSTs)."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=b"first"))
        await peer.request()  # the second request arrives on the old connection...
        await asyncio.sleep(delay)
        # ...and the server closes it without a byte

    async with serve(handler) as srv, client() as up:
        assert await call(up, srv.url("/1")) == b"first"
        with pytest.raises(ConnectFailed, match="closed by the upstream"):
            await call(up, srv.url("/2"))
        assert pooled(up) == 0
        assert not up._busy
    assert len(srv.peers) == 1
    assert [r.line for r in srv.peers[0].requests] == ["POST /1 HTTP/1.1", "POST /2 HTTP/1.1"]


@pytest.mark.anyio
async def test_idle_connection_the_server_closed_unnoticed_is_replaced_before_the_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's FIN is in the socket but the loop has not seen it yet (the
    keep-alive race): the pooled connection is peeked at and replaced, so the one
    request goes out once, on a fresh connection, and succeeds."""
    monkeypatch.setattr(h1, "PEEK_AFTER", 0.0)

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(response(body=b"first"))
            await hold(peer)
        await keep_alive(peer, b"second")

    async with serve(handler) as srv, client() as up:
        assert await call(up, srv.url("/1")) == b"first"
        assert pooled(up) == 1
        server_side = srv.peers[0].writer.transport.get_extra_info("socket")
        raw = socket.socket(server_side.family, server_side.type, 0, server_side.fileno())
        raw.shutdown(socket.SHUT_RDWR)  # FIN now, without a loop turn on either side
        raw.detach()
        time.sleep(0.05)  # the FIN reaches the client's socket; its loop is not running
        assert not any(c.lost for idle in up._idle.values() for c in idle)
        assert await call(up, srv.url("/2")) == b"second"
    assert len(srv.peers) == 2
    assert [r.line for r in srv.peers[0].requests] == ["POST /1 HTTP/1.1"]
    assert [r.line for r in srv.peers[1].requests] == ["POST /2 HTTP/1.1"]


@pytest.mark.anyio
async def test_recently_pooled_connection_is_reused_without_a_peek(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peeks: list[h1._Conn] = []
    real = h1._stale
    monkeypatch.setattr(h1, "_stale", lambda conn: peeks.append(conn) or real(conn))
    async with serve(keep_alive) as srv, client() as up:
        for _ in range(3):
            await call(up, srv.url())
        assert peeks == []
        monkeypatch.setattr(h1, "PEEK_AFTER", 0.0)
        await call(up, srv.url())
        assert len(peeks) == 1
    assert len(srv.peers) == 1


@pytest.mark.anyio
async def test_fresh_connection_closed_before_responding_is_connect_failed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.writer.close()

    async with serve(handler) as srv, client() as up:
        with pytest.raises(ConnectFailed):
            await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert pooled(up) == 0
        assert not up._busy
    assert len(srv.peers) == 1  # a fresh connection is not retried


@pytest.mark.anyio
async def test_aclose_twice_pools_the_connection_once() -> None:
    both = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            if len(peer.requests) == 2 or peer.index == 1:
                if peer.index == 1:
                    both.set()
                await both.wait()
            await peer.send(response(body=req.line.encode()))

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url("/a"), {}, b"{}", timeout=T)
        assert await resp.read() == b"POST /a HTTP/1.1"
        await resp.aclose()
        await resp.aclose()
        assert pooled(up) == 1
        got = await asyncio.gather(call(up, srv.url("/b")), call(up, srv.url("/c")))
        assert sorted(got) == [b"POST /b HTTP/1.1", b"POST /c HTTP/1.1"]
    assert len(srv.peers) == 2


@pytest.mark.anyio
async def test_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection idle longer than KEEPALIVE is closed, not reused: a load
    balancer (Azure's drops idle flows after 4 minutes) may have forgotten it silently."""
    monkeypatch.setattr(h1, "KEEPALIVE", 0.2)

    async def handler(peer: Peer) -> None:
        await keep_alive(peer)

    async with serve(handler) as srv, client() as up:
        assert await call(up, srv.url()) == b"POST /openai/v1/chat/completions HTTP/1.1"
        assert await call(up, srv.url()) == b"POST /openai/v1/chat/completions HTTP/1.1"
        assert len(srv.peers) == 1
        await asyncio.sleep(0.4)
        assert await call(up, srv.url()) == b"POST /openai/v1/chat/completions HTTP/1.1"
        assert len(srv.peers) == 2
        assert await srv.peers[0].client_closed(), "the expired connection was left open"


@pytest.mark.anyio
async def test_unsolicited_bytes_on_an_idle_connection_retire_it() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=b"ok"))
        if peer.index == 0:
            await peer.send(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            await hold(peer)  # and the server keeps the connection open
        await keep_alive(peer)

    async with serve(handler) as srv, client() as up:
        assert await call(up, srv.url()) == b"ok"
        await eventually(lambda: all(c.lost for idle in up._idle.values() for c in idle))
        assert await call(up, srv.url()) == b"ok"
        assert await srv.peers[0].client_closed()
    assert len(srv.peers) == 2


# --- connect failures and timeouts -----------------------------------------------------


@pytest.mark.anyio
async def test_refused_port_is_connect_failed_at_once() -> None:
    async with client() as up:
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await up.request("POST", f"http://127.0.0.1:{free_port()}/x", {}, b"{}", timeout=T)
        assert time.monotonic() - started < 2.0


@pytest.mark.anyio
async def test_connect_timeout_when_the_handshake_hangs() -> None:
    """A listener with a full accept backlog drops SYNs: the connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    port = listener.getsockname()[1]
    try:
        async with client() as up:
            started = time.monotonic()
            with pytest.raises(ConnectFailed, match="timed out"):
                async with asyncio.timeout(5):  # a failure, not a hang, if the bound is lost
                    url = f"http://127.0.0.1:{port}/x"
                    await up.request("POST", url, {}, b"{}", timeout=Timeouts(0.3, 5))
            assert 0.25 < time.monotonic() - started < 3.0
    finally:
        filler.close()
        listener.close()


@pytest.mark.anyio
async def test_connect_timeout_covers_the_tls_handshake() -> None:
    async with serve(hold) as srv, client() as up:  # TCP accepts, TLS never answers
        url = f"https://127.0.0.1:{srv.port}/x"
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="timed out"):
            async with asyncio.timeout(5):
                await up.request("POST", url, {}, b"{}", timeout=Timeouts(0.3, 5))
        assert time.monotonic() - started < 3.0


@pytest.mark.anyio
async def test_first_byte_timeout_closes_the_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        started = time.monotonic()
        with pytest.raises(TimedOut):
            async with asyncio.timeout(5):
                await up.request("POST", srv.url(), {}, b"{}", timeout=Timeouts(5, 0.3))
        assert 0.25 < time.monotonic() - started < 3.0
        assert await srv.peers[0].client_closed()
        assert pooled(up) == 0
        assert not up._busy


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_idle_timeout_mid_body_is_stream_broken_and_closes(mode: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=b"x" * 100)[:-90])  # 10 of 100 body bytes, then silence
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=Timeouts(5, 0.3))
        # read(): its total deadline (the same 0.3 s, counted from the call) comes first
        late = r"not complete within 0\.3s" if mode == "read" else r"no body bytes for 0\.3s"
        with pytest.raises(StreamBroken, match=late):
            async with asyncio.timeout(5):
                if mode == "read":
                    await resp.read()
                else:
                    async for data in resp.chunks():
                        assert data == b"x" * 10
        # closed at once, before the caller's aclose(): the upstream is freed
        assert await srv.peers[0].client_closed()
        await resp.aclose()
        assert pooled(up) == 0
        assert not up._busy


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_slow_steady_stream_is_not_cut_but_a_body_read_whole_has_a_total_deadline(
    mode: str,
) -> None:
    """Eight gaps of 0.15 s add up past the 1 s timeout: a stream (`chunks()`) is
    timed between bytes only; a body read whole must also be complete within 1 s."""
    parts = [b"part %d;" % i for i in range(8)]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            await asyncio.sleep(0.15)
            await peer.send(b"%x\r\n%s\r\n" % (len(part), part))
        await peer.send(b"0\r\n\r\n")
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        started = time.monotonic()
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=Timeouts(5, 1.0))
        if mode == "read":
            with pytest.raises(StreamBroken, match="not complete within 1s"):
                await resp.read()
            assert 0.9 < time.monotonic() - started < 1.3
        else:
            body = b"".join([data async for data in resp.chunks()])
            assert body == b"".join(parts)
            assert time.monotonic() - started > 1.0
        await resp.aclose()


# --- connection drops and invalid HTTP ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["content-length", "chunked", "Chunked"])
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_drop_mid_body_is_stream_broken(framing: str, mode: str) -> None:
    if framing.lower() == "chunked":
        raw = chunked(b"a" * 50, b"b" * 50).replace(b": chunked", f": {framing}".encode())
        cut = raw.index(b"b" * 50) + 10
    else:
        raw = response(body=b"a" * 100)
        cut = len(raw) - 50

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(raw[:cut])
        await asyncio.sleep(0.05)
        peer.writer.close()

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        got = b""
        with pytest.raises(StreamBroken, match="closed by the upstream"):
            if mode == "read":
                await resp.read()
            else:
                async for data in resp.chunks():
                    got += data
        if mode == "chunks":
            assert got == (b"a" * 50 if framing == "content-length" else b"a" * 50 + b"b" * 10)
        await resp.aclose()
        assert pooled(up) == 0
        assert not up._busy


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
    ids=["not-http", "bad-status", "two-lengths", "upgrade", "bad-header"],
)
async def test_invalid_head_is_connect_failed(raw: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(raw)
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        with pytest.raises(ConnectFailed):
            await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert await srv.peers[0].client_closed()
        assert pooled(up) == 0
        assert not up._busy


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_invalid_chunk_framing_is_stream_broken(mode: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.05)
        await peer.send(b"zz\r\nnot a chunk\r\n")
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        with pytest.raises(StreamBroken, match="invalid HTTP"):
            if mode == "read":
                await resp.read()
            else:
                async for data in resp.chunks():
                    assert data == b"hello"
        assert await srv.peers[0].client_closed()
        await resp.aclose()
        assert pooled(up) == 0


# --- cancellation and aclose -----------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_while_awaiting_headers_closes_the_connection() -> None:
    arrived = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        arrived.set()
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        task = asyncio.create_task(up.request("POST", srv.url(), {}, b"{}", timeout=T))
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await srv.peers[0].client_closed()
        assert pooled(up) == 0
        assert not up._busy


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["read", "chunks"])
async def test_cancel_while_awaiting_body_closes_the_connection(mode: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=b"x" * 100)[:-50])
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        got: list[bytes] = []

        async def consume() -> None:
            if mode == "read":
                await resp.read()
            else:
                async for data in resp.chunks():
                    got.append(data)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await srv.peers[0].client_closed()  # before any aclose()
        assert not up._busy
        await resp.aclose()
        assert pooled(up) == 0
        if mode == "chunks":
            assert got == [b"x" * 50]


@pytest.mark.anyio
async def test_aclose_of_a_partly_read_response_closes_instead_of_pooling() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(response(body=b"x" * 100)[:-50])
            await hold(peer)
        await peer.send(response(body=b"fresh"))
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        await anext(resp.chunks())
        await resp.aclose()
        assert await srv.peers[0].client_closed()
        assert pooled(up) == 0
        assert not up._busy
        assert await call(up, srv.url()) == b"fresh"
    assert len(srv.peers) == 2


@pytest.mark.anyio
async def test_unread_complete_body_pools_a_working_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body that arrived whole (reading paused at the high-water mark) and was never
    read: the pooled connection must read again for the next response."""
    monkeypatch.setattr(h1, "HIGH_WATER", 16)

    async def handler(peer: Peer) -> None:
        await keep_alive(peer, b"y" * 100)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        conn = conn_of(resp)
        await eventually(lambda: conn.complete)
        assert conn.paused
        await resp.aclose()
        assert pooled(up) == 1
        assert await call(up, srv.url(), timeout=Timeouts(5, 2)) == b"y" * 100
    assert len(srv.peers) == 1


@pytest.mark.anyio
async def test_client_aclose_closes_idle_and_busy_connections() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(response(body=b"x" * 100)[:-50])
        else:
            await peer.send(response(body=b"done"))
        await hold(peer)

    async with serve(handler) as srv:
        up = H1Upstream()
        busy = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert await call(up, srv.url()) == b"done"
        assert pooled(up) == 1
        assert len(srv.peers) == 2
        await up.aclose()
        assert await srv.peers[0].client_closed()
        assert await srv.peers[1].client_closed()
        assert pooled(up) == 0
        assert not up._busy
        with pytest.raises(StreamBroken):
            await busy.read()
        await busy.aclose()


# --- back-pressure ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_back_pressure_bounds_buffered_bytes(framing: str) -> None:
    size = 8 * 1024 * 1024
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    data = b"".join(block[: i % 64 + 1] + block for i in range(size // len(block)))
    if framing == "chunked":
        parts = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
        raw = chunked(*parts)
    else:
        raw = response(body=data)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(raw)
        await hold(peer)

    async with serve(handler) as srv, client() as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        conn = conn_of(resp)
        digest = hashlib.sha256()
        received = most = 0
        paused = False
        async for chunk in resp.chunks():
            digest.update(chunk)
            received += len(chunk)
            await asyncio.sleep(0.003)  # a slow consumer: the server could send far more
            most = max(most, conn.buffered)
            paused = paused or conn.paused
        assert received == len(data)
        assert digest.digest() == hashlib.sha256(data).digest()
        assert paused, "the socket was never paused"
        # past the mark, at most one more read of the socket lands in the buffer
        assert most <= h1.HIGH_WATER + 256 * 1024, most
        await resp.aclose()
        assert pooled(up) == 1


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_pair(ca: trustme.CA, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server, client_ctx


@pytest.mark.anyio
async def test_tls_request_keep_alive_and_stream(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_pair(ca, "127.0.0.1")

    async def handler(peer: Peer) -> None:
        req = await peer.request()
        assert req is not None
        await peer.send(response(body=req.body[::-1]))
        await peer.request()
        await peer.send_split(chunked(*SSE), 50)
        await hold(peer)

    async with serve(handler, server_ctx) as srv, client(client_ctx) as up:
        assert await call(up, srv.url(), b"abc") == b"cba"
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert b"".join([data async for data in resp.chunks()]) == b"".join(SSE)
        await resp.aclose()
        assert srv.peers[0].requests[0].headers["host"] == f"127.0.0.1:{srv.port}"
    assert len(srv.peers) == 1


@pytest.mark.anyio
async def test_tls_body_delimited_by_close(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_pair(ca, "127.0.0.1")

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
        peer.writer.close()
        await peer.writer.wait_closed()

    async with serve(handler, server_ctx) as srv, client(client_ctx) as up:
        assert await call(up, srv.url()) == b"until close"


@pytest.mark.anyio
async def test_tls_back_pressure(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_pair(ca, "127.0.0.1")
    data = hashlib.sha256(b"tls").digest() * (4 * 1024 * 1024 // 32)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response(body=data))
        await hold(peer)

    async with serve(handler, server_ctx) as srv, client(client_ctx) as up:
        resp = await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        conn = conn_of(resp)
        got = bytearray()
        most = 0
        async for chunk in resp.chunks():
            got += chunk
            await asyncio.sleep(0.003)
            most = max(most, conn.buffered)
        assert bytes(got) == data
        assert most <= h1.HIGH_WATER + 256 * 1024, most


@pytest.mark.anyio
@pytest.mark.parametrize("trust", ["wrong-name", "untrusted"])
async def test_tls_failures_are_connect_failed(ca: trustme.CA, trust: str) -> None:
    server_ctx, client_ctx = tls_pair(ca, "other.example")
    if trust == "untrusted":
        server_ctx, _ = tls_pair(ca, "127.0.0.1")
        client_ctx = ssl.create_default_context()  # the system store knows nothing of our CA
    async with serve(keep_alive, server_ctx) as srv, client(client_ctx) as up:
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await up.request("POST", srv.url(), {}, b"{}", timeout=T)
        assert not up._busy


# --- the simulator ------------------------------------------------------------------------------


def chat(stream: bool = False) -> bytes:
    messages = [{"role": "user", "content": "hello there"}]
    return orjson.dumps({"model": "gpt-4o", "messages": messages, "stream": stream})


SIM_HEADERS = {"api-key": SIM_KEYS[0], "content-type": "application/json"}


@pytest.mark.anyio
async def test_simulator_body_and_stream(sim: dict[str, Sim]) -> None:
    url = sim["eastus"].url + "/openai/v1/chat/completions"
    async with client() as up:
        for _ in range(2):
            resp = await up.request("POST", url, SIM_HEADERS, chat(), timeout=T)
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            body = orjson.loads(await resp.read())
            assert body["choices"][0]["message"]["content"] == "You said: hello there"
            await resp.aclose()

            resp = await up.request("POST", url, SIM_HEADERS, chat(stream=True), timeout=T)
            assert resp.headers["content-type"].startswith("text/event-stream")
            text = b"".join([data async for data in resp.chunks()])
            await resp.aclose()
            events = [line[6:] for line in text.split(b"\n") if line.startswith(b"data: ")]
            assert events[-1] == b"[DONE]"
            content = "".join(
                (c["delta"].get("content") or "")
                for e in events[:-1]
                for c in orjson.loads(e)["choices"]
            )
            assert content == "You said: hello there"
        assert pooled(up) == 1  # four calls, one keep-alive connection
    got = sim["eastus"].requests()
    assert len(got) == 4
    assert got[0]["headers"]["api-key"] == SIM_KEYS[0]
    assert got[0]["body"] == orjson.loads(chat())


@pytest.mark.anyio
async def test_simulator_concurrent_calls(sim: dict[str, Sim]) -> None:
    url = sim["sweden"].url + "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    async with client() as up:
        calls = (call(up, url, chat(), headers=SIM_HEADERS) for _ in range(24))
        bodies = await asyncio.gather(*calls)
        for body in bodies:
            assert orjson.loads(body)["choices"][0]["message"]["content"] == "You said: hello there"
        assert 1 <= pooled(up) <= 24
        assert not up._busy


@pytest.mark.anyio
async def test_simulator_faults(sim: dict[str, Sim]) -> None:
    eastus = sim["eastus"]
    url = eastus.url + "/openai/v1/chat/completions"
    async with client() as up:
        eastus.fault("429", count=1, retry_after=3)
        resp = await up.request("POST", url, SIM_HEADERS, chat(), timeout=T)
        assert resp.status == 429
        assert resp.headers["retry-after"] == "3"
        assert b"rate limit" in await resp.read()
        await resp.aclose()

        eastus.fault("500", count=1)
        resp = await up.request("POST", url, SIM_HEADERS, chat(), timeout=T)
        assert resp.status == 500
        await resp.read()
        await resp.aclose()

        eastus.fault("drop", count=1, after_chunks=1)
        resp = await up.request("POST", url, SIM_HEADERS, chat(stream=True), timeout=T)
        with pytest.raises(StreamBroken):
            async for _ in resp.chunks():
                pass
        await resp.aclose()

        eastus.fault("drop", count=1)
        resp = await up.request("POST", url, SIM_HEADERS, chat(), timeout=T)
        with pytest.raises(StreamBroken):
            await resp.read()
        await resp.aclose()

        eastus.fault("hang", count=1)
        with pytest.raises(TimedOut):
            await up.request("POST", url, SIM_HEADERS, chat(), timeout=Timeouts(5, 0.3))

        body = await call(up, url, chat(), headers=SIM_HEADERS)
        assert orjson.loads(body)["object"] == "chat.completion"
        assert not up._busy
