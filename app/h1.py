"""A lean HTTP/1.1 client for the hot path: asyncio protocols + httptools.

Why not aiohttp or httpx: measured on the benchmark machine (2 cores, the
project's simulator, 32 concurrent requests), one upstream call costs about
110-120 us of CPU with aiohttp's ClientSession and several times that with
httpx, against about 35 us here. A relay makes one such call per request, so
the client decided whether the gateway could reach half of direct throughput
(README, Performance). The scope is exactly what an Azure deployment needs:

- POST with a body, keep-alive connections pooled per origin, TLS with the
  system trust store, `Content-Length` or chunked responses (httptools, the
  parser uvicorn uses, does the decoding);
- timeouts: connect, first byte (response headers), between body bytes, and
  for a body read whole, its total; the limits of `app.upstream` on headers
  (count, size) and on a body read whole;
- a body streamed as it arrives, with back-pressure (the socket is paused
  while more than `HIGH_WATER` bytes wait for the consumer);
- a request cancelled or a body left unread closes its connection, so a
  client that hangs up frees the upstream at once;
- a request is written once and never sent again: a pooled connection is
  checked before the write (closed, or the server's FIN or stray bytes already
  waiting in the socket: see `_stale`) and replaced if stale, but once the
  request is on the wire a drop is the attempt's failure (`ConnectFailed`),
  for the failover loop to count, cool and fail over - the upstream may have
  read and billed it. A connection idle in the pool for more than `KEEPALIVE`
  seconds is closed instead of reused (load balancers forget idle flows
  without a word);
- a body without `Content-Length` or chunking ends when the server closes;
  1xx interim responses (100 Continue, 103 Early Hints) are skipped.

No proxies, no redirects, no compression (we ask for `identity`); when
`HTTPS_PROXY`/`HTTP_PROXY` is set the server uses `AiohttpUpstream` instead.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

from app.upstream import (
    MAX_FIELD,
    MAX_HEADERS,
    Body,
    ConnectFailed,
    Response,
    StreamBroken,
    TimedOut,
    Timeouts,
    body_size,
    incomplete,
    over_limit,
    too_large,
)

HIGH_WATER = 256 * 1024
SWEEP = 0.05  # seconds between deadline checks: how late a timeout may fire
MAX_IDLE_PER_ORIGIN = 256
MAX_HEAD = MAX_HEADERS * MAX_FIELD  # bytes before a response's headers are complete
KEEPALIVE = 30.0  # seconds a pooled connection may stay idle (aiohttp's default too)
# A connection idle for longer than this is peeked at before reuse (`_stale`): a
# server closes idle connections after its keep-alive timeout, never within a
# second, and the peek (a syscall, ~3 us) stays off connections reused at once.
PEEK_AFTER = 1.0
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT

Origin = tuple[str, str, int]  # scheme, host, port


class _Conn(asyncio.Protocol):
    """One connection; at most one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self.prepare()

    def prepare(self) -> None:
        """Fresh per-request state (the parser carries over between messages)."""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0  # received while the head is incomplete; -1 once it is
        self.status = 0
        self.keep_alive = False
        self.until_eof = False  # no Content-Length, not chunked: the body ends at EOF
        self.interim = False  # inside a 1xx response
        self.complete = False
        self.error: str | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.head: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # loop time when the awaited head/body bytes are late; 0: none

    # asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.head_bytes >= 0:
            if self.head_bytes > MAX_HEAD:
                self._fail(f"response head over {MAX_HEAD} bytes")
                return
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("unexpected protocol upgrade")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP response: {exc}")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.complete:
            return
        if exc is None and self.until_eof and self.error is None:  # not our own close()
            self.complete = True  # the server's close is the end of this body
            self._wake()
        else:
            self._fail(f"connection closed by the upstream ({exc or 'EOF'})")

    # httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        head = self.head
        if head is None or head.done():
            self._fail("a response nobody asked for")  # e.g. a 408 on an idle connection

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= MAX_HEADERS or len(name) + len(value) > MAX_FIELD:
            self._fail(f"response headers over the limit ({MAX_HEADERS} of {MAX_FIELD} bytes)")
            return
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the final response follows
            self.interim = True
            self.headers = {}
            return
        self.status = status
        self.head_bytes = -1
        self.keep_alive = self.parser.should_keep_alive()  # reset once the message completes
        headers = self.headers
        self.until_eof = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
        )
        head = self.head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()

    # --------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        head = self.head
        if head is not None and not head.done():
            head.set_exception(ConnectFailed(self.error))
        self._wake()
        if self.transport is not None and not self.lost:
            self.transport.close()

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost and self.error is None

    def close(self) -> None:
        self.lost = True
        if self.error is None:
            self.error = "connection closed"
        if self.transport is not None:
            self.transport.close()


def _stale(conn: _Conn) -> bool:
    """Whether the server already ended an idle connection (FIN, RST or a stray
    408 waiting in the socket) though the loop has not processed it yet."""
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:  # a view of the fd, not a second owner: detached below, never closed
        probe = socket.socket(sock.family, sock.type, 0, sock.fileno())
    except OSError:
        return True
    try:
        probe.recv(1, _PEEK)
    except BlockingIOError:
        return False  # nothing waiting: the connection is as the server left it
    except OSError:
        return True
    finally:
        probe.detach()
    return True  # EOF, or bytes nobody asked for


class _H1Response:
    """The body of one exchange; a body cut short (timeout, drop, cancellation)
    closes its connection at once, `aclose()` pools it only if it ended cleanly."""

    __slots__ = ("_client", "_conn", "_limits", "_open", "headers", "status")

    def __init__(self, client: H1Upstream, conn: _Conn, limits: Timeouts) -> None:
        self._client = client
        self._conn = conn
        self._limits = limits
        self._open = True
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers  # this exchange's: prepare() makes anew

    async def _wait(self, until: float = 0.0) -> None:
        """The next body bytes, within the gap timeout (and before `until`, if set)."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        waiter = conn.waiter = loop.create_future()
        gap = self._limits.read
        conn.deadline = loop.time() + gap
        if until and until < conn.deadline:
            conn.deadline = until
        self._client.watch_deadlines(loop)
        try:
            await waiter
        except TimeoutError:
            if until and loop.time() >= until:
                raise self._broken(incomplete(gap)) from None
            raise self._broken(StreamBroken(f"no body bytes for {gap:g}s")) from None
        except asyncio.CancelledError:
            self._drop()
            raise
        finally:
            conn.deadline = 0.0
            conn.waiter = None

    def _broken(self, error: StreamBroken) -> StreamBroken:
        self._drop()
        return error

    def _drop(self) -> None:
        if self._open:
            self._open = False
            self._client.discard(self._conn)

    async def read(self) -> bytes:
        """The whole body: at most `max_body` bytes, complete within `read` seconds."""
        conn = self._conn
        limit = self._limits.max_body
        error = too_large(conn.headers.get("content-length"), limit)
        if error is not None:
            raise self._broken(error)
        until = asyncio.get_running_loop().time() + self._limits.read
        parts: list[bytes] = []
        size = 0
        while True:
            if conn.chunks:
                piece = conn.take()
                size += len(piece)
                if size > limit:
                    raise self._broken(over_limit(limit))
                parts.append(piece)
            if conn.complete:
                return b"".join(parts)
            if conn.error is not None:
                raise self._broken(StreamBroken(conn.error))
            await self._wait(until)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise self._broken(StreamBroken(conn.error))
            await self._wait()

    async def aclose(self) -> None:
        if self._open:  # twice would pool the connection twice
            self._open = False
            self._client.release(self._conn)


class H1Upstream:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Conn]] = {}
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._busy: set[_Conn] = set()
        self._sweep: asyncio.TimerHandle | None = None

    # Timeouts: one periodic sweep over the busy connections instead of a loop
    # timer per wait. With uvloop a timer handle per request (first byte) and per
    # body wait cost 10-15% of the gateway's CPU (measured with the benchmark);
    # a deadline is a float on the connection, checked every SWEEP seconds, so a
    # timeout fires at most SWEEP late.

    def watch_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP, self._expire_late, loop)

    def _expire_late(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        now = loop.time()
        pending = False
        for conn in self._busy:
            deadline = conn.deadline
            if not deadline:
                continue
            if now < deadline:
                pending = True
                continue
            conn.deadline = 0.0
            for fut in (conn.head, conn.waiter):
                if fut is not None and not fut.done():
                    fut.set_exception(TimeoutError())
        if pending:
            self.watch_deadlines(loop)

    def _target(self, url: str, method: str = "POST") -> tuple[Origin, bytes]:
        cache = url if method == "POST" else f"{method} {url}"
        found = self._targets.get(cache)
        if found is None:
            parts = urlsplit(url)
            scheme = parts.scheme or "http"
            port = parts.port or (443 if scheme == "https" else 80)
            host = parts.hostname or ""
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
            name = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
            host_header = name if default else f"{name}:{port}"
            prefix = f"{method} {path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("latin-1")
            found = self._targets[cache] = ((scheme, host, port), prefix)
        return found

    async def _connect(self, origin: Origin, timeout: Timeouts) -> _Conn:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            async with asyncio.timeout(timeout.connect):
                _, conn = await loop.create_connection(
                    lambda: _Conn(origin),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=host if ctx else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from None
        return conn

    def _pop_idle(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        expired = now - KEEPALIVE
        while idle:
            conn = idle.pop()
            if conn.lost or conn.error is not None:  # closed, or closing
                continue
            if conn.idle_since < expired:  # the rest were pooled earlier: expired too
                conn.close()
                for old in idle:
                    old.close()
                idle.clear()
                return None
            if conn.idle_since < now - PEEK_AFTER and _stale(conn):
                conn.close()
                continue  # another pooled one may be fresh; else a new connection
            return conn
        return None

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, *, timeout: Timeouts
    ) -> Response:
        origin, prefix = self._target(url, method)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = b"%s%saccept-encoding: identity\r\ncontent-length: %d\r\n\r\n" % (
            prefix,
            lines.encode("latin-1"),
            body_size(body),
        )
        conn = self._pop_idle(origin) or await self._connect(origin, timeout)
        await self._exchange(conn, head, body, timeout)  # written once: never resent
        return _H1Response(self, conn, timeout)

    async def _exchange(self, conn: _Conn, head: bytes, body: Body, timeout: Timeouts) -> None:
        conn.prepare()
        loop = asyncio.get_running_loop()
        conn.head = loop.create_future()
        transport = conn.transport
        assert transport is not None
        self._busy.add(conn)
        if not isinstance(body, bytes):
            transport.writelines((head, *body))  # pieces of an upload: written, not joined
        elif len(body) < 65536:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        conn.deadline = loop.time() + timeout.read
        self.watch_deadlines(loop)
        try:
            await conn.head
        except TimeoutError:
            self.discard(conn)
            raise TimedOut(f"no response within {timeout.read:g}s") from None
        except BaseException:
            self.discard(conn)
            raise
        finally:
            conn.deadline = 0.0

    def release(self, conn: _Conn) -> None:
        """Back to the pool if its response ended cleanly, else closed."""
        self._busy.discard(conn)
        if conn.reusable():
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                if conn.paused:  # a body that came whole but was not read
                    conn.take()
                conn.idle_since = time.monotonic()
                idle.append(conn)
                return
        conn.close()

    def discard(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
