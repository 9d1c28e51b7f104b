"""Plain-ASGI plumbing shared by every simulator route: types, body reading, replies.

`Reply` is the one place that writes HTTP responses, so every operation sends the
resource's common headers (region, request ids) the same way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

CT_JSON: Final = (b"content-type", b"application/json")
CT_SSE: Final = (b"content-type", b"text/event-stream")
RATELIMIT: Final = (
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-remaining-tokens", b"999000"),
)


def request_id() -> bytes:
    """A random UUID-formatted id (cheaper than ``uuid.uuid4``)."""
    h = os.urandom(16).hex().encode()
    return b"%s-%s-4%s-%s-%s" % (h[:8], h[8:12], h[13:16], h[16:20], h[20:])


def parse_or_none(body: bytes) -> Any:
    """Parsed JSON, or None if empty or invalid."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def query_param(query: bytes, name: bytes) -> bytes | None:
    """The raw value of ``name`` in a query string (first occurrence), else None."""
    prefix = name + b"="
    for part in query.split(b"&"):
        if part.startswith(prefix):
            return part[len(prefix) :]
    return None


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The value of request header ``name`` (lower-case), else ``b""``."""
    for n, value in headers:
        if n == name:
            return value
    return b""


async def read_body(receive: Receive) -> bytes | None:
    """Read the whole request body; None if the client disconnected."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def wait_disconnect(receive: Receive, seconds: float | None) -> bool:
    """Wait up to ``seconds`` (None: forever); True if the client disconnected meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer lifespan startup/shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class Reply:
    """Sends one HTTP response with the resource's common headers."""

    __slots__ = ("_base", "receive", "send")

    def __init__(self, receive: Receive, send: Send, base_headers: Headers) -> None:
        self.receive = receive
        self.send = send
        self._base = base_headers

    def headers(self, extra: Iterable[tuple[bytes, bytes]] = ()) -> Headers:
        """Common headers (region, fresh request ids) plus ``extra``."""
        rid = request_id()
        headers = [*self._base, (b"apim-request-id", rid), (b"x-request-id", rid)]
        headers.extend(extra)
        return headers

    async def json(
        self, status: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
    ) -> int:
        """A whole JSON response; returns ``status``."""
        headers = self.headers(extra)
        headers.append(CT_JSON)
        headers.append((b"content-length", b"%d" % len(body)))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
        return status

    async def empty(self) -> int:
        """``204 No Content``."""
        await self.send({"type": "http.response.start", "status": 204, "headers": self.headers()})
        await self.send({"type": "http.response.body", "body": b""})
        return 204

    async def drop_json(self, payload: bytes) -> int:
        """Announce the full body, send half of it, then return without finishing."""
        headers = self.headers(RATELIMIT)
        headers.append(CT_JSON)
        headers.append((b"content-length", b"%d" % len(payload)))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        half = payload[: len(payload) // 2]
        await self.send({"type": "http.response.body", "body": half, "more_body": True})
        return 200

    async def whole(self, body: bytes, content_type: bytes) -> int:
        """A whole ``200`` answer of any content type; returns 200."""
        headers = self.headers(RATELIMIT)
        headers.append((b"content-type", content_type))
        headers.append((b"content-length", b"%d" % len(body)))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
        return 200

    async def start_stream(self, content_type: bytes = CT_SSE[1]) -> None:
        """Start a 200 streamed response (``text/event-stream`` unless told otherwise)."""
        headers = self.headers(RATELIMIT)
        headers.append((b"content-type", content_type))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def chunk(self, data: bytes, more: bool = True) -> None:
        """One piece of a streamed body (``more=False`` ends it)."""
        await self.send({"type": "http.response.body", "body": data, "more_body": more})
