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
- timeouts: connect, first byte (response headers), and between body bytes;
- a body streamed as it arrives, with back-pressure (the socket is paused
  while more than `HIGH_WATER` bytes wait for the consumer);
- a request cancelled or a body left unread closes its connection, so a
  client that hangs up frees the upstream at once;
- a reused keep-alive connection the server had closed is retried once on a
  fresh one (nothing was sent to the application, so a POST is safe to resend).

No proxies, no redirects, no compression (we ask for `identity`); when
`HTTPS_PROXY`/`HTTP_PROXY` is set the server uses `AiohttpUpstream` instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from app.upstream import ConnectFailed, Response, StreamBroken, TimedOut, Timeouts

HIGH_WATER = 256 * 1024
MAX_IDLE_PER_ORIGIN = 256

Origin = tuple[str, str, int]  # scheme, host, port


class _Conn(asyncio.Protocol):
    """One connection; at most one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.prepare()

    def prepare(self) -> None:
        """Fresh per-request state (the parser carries over between messages)."""
        self.headers: dict[str, str] = {}
        self.status = 0
        self.keep_alive = False
        self.got_bytes = False
        self.complete = False
        self.error: str | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.head: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
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
        if not self.complete:
            self._fail(f"connection closed by the upstream ({exc or 'EOF'})")

    # httptools callbacks -----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # reset once the message completes
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
            head.set_exception(ConnectFailed(message))
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
        return self.complete and self.keep_alive and not self.lost

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _H1Response:
    __slots__ = ("_client", "_conn", "_timeout", "status")

    def __init__(self, client: H1Upstream, conn: _Conn, timeout: float) -> None:
        self._client = client
        self._conn = conn
        self._timeout = timeout
        self.status = conn.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._conn.headers

    async def _wait(self) -> None:
        conn = self._conn
        loop = asyncio.get_running_loop()
        waiter = conn.waiter = loop.create_future()
        timer = loop.call_later(self._timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            conn.waiter = None

    async def read(self) -> bytes:
        conn = self._conn
        parts: list[bytes] = []
        while True:
            if conn.chunks:
                parts.append(conn.take())
            if conn.complete:
                return b"".join(parts)
            if conn.error is not None:
                raise StreamBroken(conn.error)
            try:
                await self._wait()
            except TimeoutError:
                raise StreamBroken(f"no body bytes for {self._timeout:g}s") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise StreamBroken(conn.error)
            try:
                await self._wait()
            except TimeoutError:
                raise StreamBroken(f"no stream bytes for {self._timeout:g}s") from None

    async def aclose(self) -> None:
        self._client.release(self._conn)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class H1Upstream:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Conn]] = {}
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._busy: set[_Conn] = set()

    def _target(self, url: str) -> tuple[Origin, bytes]:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            scheme = parts.scheme or "http"
            port = parts.port or (443 if scheme == "https" else 80)
            host = parts.hostname or ""
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
            host_header = host if default else f"{host}:{port}"
            prefix = f"POST {path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("latin-1")
            found = self._targets[url] = ((scheme, host, port), prefix)
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
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        return None

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timeout: Timeouts
    ) -> Response:
        origin, prefix = self._target(url)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = b"%s%saccept-encoding: identity\r\ncontent-length: %d\r\n\r\n" % (
            prefix,
            lines.encode("latin-1"),
            len(body),
        )
        for _ in range(2):
            conn = self._pop_idle(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, timeout)
            try:
                await self._exchange(conn, head, body, timeout)
            except ConnectFailed:
                if reused and not conn.got_bytes:
                    continue  # a stale keep-alive connection: once more, on a fresh one
                raise
            return _H1Response(self, conn, timeout.read)
        raise ConnectFailed("the upstream closed the connection twice")  # pragma: no cover

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes, timeout: Timeouts) -> None:
        conn.prepare()
        loop = asyncio.get_running_loop()
        conn.head = loop.create_future()
        transport = conn.transport
        assert transport is not None
        self._busy.add(conn)
        if len(body) < 65536:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        timer = loop.call_later(timeout.read, _expire, conn.head)
        try:
            await conn.head
        except TimeoutError:
            self._busy.discard(conn)
            conn.close()
            raise TimedOut(f"no response within {timeout.read:g}s") from None
        except BaseException:
            self._busy.discard(conn)
            conn.close()
            raise
        finally:
            timer.cancel()

    def release(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        if conn.reusable():
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
