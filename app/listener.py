"""The HTTP/1.1 listener: uvicorn's httptools protocol with limits on what a caller may hold.

uvicorn's httptools protocol (the fast one; h11 costs ~43% of throughput) has an
idle keep-alive timeout and a concurrency cap, but no limit on the size of a
request head, no deadline for a head or a body, and no timer at all on a
connection that never sends a byte. `GatewayProtocol` adds them with at most one
timer per connection, armed only while a head or body is actually outstanding
after a read (a request that arrives in one read costs no timer):

- a head not complete `head_timeout` s after the connection opened, or after its
  first byte on a kept-alive connection: the connection is closed;
- a head over `max_head_bytes`: 431 (OpenAI-shaped) and the connection is closed;
- a body not complete `body_timeout` s after its head: the connection is closed
  (the request sees a disconnect);
- an idle kept-alive connection: closed after `keep_alive_timeout` s (uvicorn's timer);
- more than `max_connections` connections or requests at once: 503 (OpenAI-shaped),
  with uvicorn's own check;
- an answer sent before the request's body was read (401, 413): the rest of the
  body is discarded, not buffered, and the connection is closed after a short
  lingering close, so the caller still reads the answer.

The limits come from `gateway:` of the configuration the server started or last
reloaded with (`Server` puts them in the lifespan state, which uvicorn hands to
every new connection); connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import GatewaySettings
from app.errors import error_body

LIMITS_KEY = "aoai_gateway.listener_limits"
LINGER = 2.0  # seconds an answered connection keeps draining the caller's unread body

log = logging.getLogger("aoai_gateway")


@dataclass(frozen=True, slots=True)
class Limits:
    head_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_head_bytes: int = 64 * 1024
    max_connections: int = 4096

    @classmethod
    def of(cls, settings: GatewaySettings) -> Limits:
        return cls(
            head_timeout=settings.head_timeout,
            body_timeout=settings.body_timeout,
            keep_alive_timeout=settings.keep_alive_timeout,
            max_head_bytes=settings.max_head_bytes,
            max_connections=settings.max_connections,
        )


def raw_error(status: int, reason: bytes, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, for use outside ASGI."""
    body = error_body(message, "invalid_request_error", None, code)
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    body = error_body(
        "The gateway has too many connections open; retry shortly.",
        "server_error",
        None,
        "too_many_connections",
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _HeadTooLarge(Exception):
    """Raised from the parser's callback to stop parsing a head over the limit."""


class OneWrite:
    """The connection's transport as uvicorn sees it: a response head is held until its
    first body bytes, so a whole small answer leaves in one write(2) (uvicorn writes head
    and body separately; on loopback each write also pays the receiver's TCP work). A
    head with nothing after it in the same loop turn (a stream waiting for its first
    event, HEAD, 100 Continue) goes out on the next turn; `close`/`write_eof` flush
    first. Everything else is the transport's own."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:9] == b"HTTP/1.1 ":  # a response head (uvicorn writes one whole)
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:  # per request: not through __getattr__
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = app_state.get(LIMITS_KEY)
        self.limits: Limits = limits if isinstance(limits, Limits) else Limits()
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]
        self.limit_concurrency = self.limits.max_connections
        self._in_head = True  # a head is due: the connection is new, or a head has begun
        self._in_body = False  # a head arrived, its body has not ended
        self._head_bytes = 0  # bytes of the head so far, counted per read
        self._read_len = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._draining = False

    # connection --------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWrite(transport, self.loop))  # type: ignore[arg-type]
        self._arm(self.limits.head_timeout)  # also a connection that never sends a byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, plus the head's size and the head and body deadlines."""
        if self._draining:
            return  # answered and closing: the rest is dropped
        self._unset_keepalive_if_required()
        was_in_body = self._in_body
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:
            if not was_in_body:  # all of this read was head (part of it otherwise)
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_head_bytes:
                    self._head_too_large()
                    return
            if self._deadline is None and not self.transport.is_closing():
                self._arm(self.limits.head_timeout)
        elif self._in_body and self._deadline is None:
            self._arm(self.limits.body_timeout)

    # parser callbacks (the base class is called directly: cheaper than super() per request)
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        # A head that arrived whole in one large read is measured exactly; the
        # usual small one costs this comparison only.
        if self._head_bytes + self._read_len > self.limits.max_head_bytes:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self.limits.max_head_bytes:
                raise _HeadTooLarge
        self._in_head = False
        self._in_body = True
        if self._deadline is not None:
            self._disarm()
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._deadline is not None:
            self._disarm()
        HttpToolsProtocol.on_message_complete(self)

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        if self._in_body and not self.transport.is_closing():
            self._linger()  # answered before the body was read: take no more of it

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        super()._start_asgi_task(cycle, _overloaded if app is service_unavailable else app)

    # limits ------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_head and not self._draining:
            log.info("closed a connection from %s: no complete request head in time", self._who())
        elif self._in_body and not self._draining:
            log.info("closed a connection from %s: the request body took too long", self._who())
        self.transport.close()

    def _head_too_large(self) -> None:
        limit = self.limits.max_head_bytes
        log.info("refused a request head over %d bytes from %s", limit, self._who())
        message = f"The request head is larger than {limit} bytes."
        self.transport.write(
            raw_error(431, b"Request Header Fields Too Large", message, "request_header_too_large")
        )
        self._linger()

    def _linger(self) -> None:
        """Half-close: the caller reads the answer, what it still sends is dropped, then close.

        Closing at once with unread bytes in the socket makes the kernel send a reset,
        which can destroy the answer before the caller has read it.
        """
        self._draining = True
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(LINGER)
        else:
            self.transport.close()

    def _who(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"
