"""Send one attempt to an Azure deployment and classify what came back.

`Upstream` is the transport interface the rest of the gateway talks to:
`post()` returns once the response headers are in (or raises `TimedOut` /
`ConnectFailed`), and the `Response` is then read whole or chunk by chunk.

- `app.h1.H1Upstream` is the hot path's client (its docstring has the
  measurement that put it there: ~35 us of CPU per call against ~115 us for
  aiohttp and more for httpx, whose pool is also encode/httpx#3215).
- `AiohttpUpstream` is used where an HTTP(S) proxy must be honoured
  (`HTTPS_PROXY`, or `AOAI_GATEWAY_UPSTREAM_CLIENT=aiohttp`).
- `HttpxUpstream` serves where httpx's API is what we want: `check --probe`,
  and unit tests of the failover decisions with respx.

Each client library's exceptions are translated here and nowhere else, and
every client holds an answer to the same limits (README "Security"): at most
`MAX_HEADERS` response headers of at most `MAX_FIELD` bytes each; a body read
whole (`read()`) of at most `Timeouts.max_body` bytes that must be complete
within `Timeouts.read` seconds of its headers (as well as no gap longer than
that); redirects are never followed. A body past a limit is `StreamBroken`,
a head past one `ConnectFailed`: both are the attempt's failure.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
import httpx

MAX_HEADERS = 128  # response headers (aiohttp's default; Azure sends about 20)
MAX_FIELD = 8190  # bytes in one response header line (aiohttp's default)
MAX_BODY = 64 * 1024 * 1024  # default cap of a body read whole (gateway.max_upstream_body_bytes)


class UpstreamError(Exception):
    """An attempt failed before or while reading the response."""


class TimedOut(UpstreamError):
    pass


class ConnectFailed(UpstreamError):
    pass


class StreamBroken(UpstreamError):
    """The response body ended early or the connection dropped mid-body."""


# A request body: one buffer, or pieces sent in order (a multipart upload re-sent with
# another `model` value is its own buffer around the new value: never copied whole).
Body = bytes | tuple[bytes | memoryview, ...]


def body_bytes(body: Body) -> bytes:
    """The body as one buffer, for the clients that take only that (aiohttp, httpx)."""
    return body if isinstance(body, bytes) else b"".join(body)


def body_size(body: Body) -> int:
    return len(body) if isinstance(body, bytes) else sum(len(p) for p in body)


class Response(Protocol):
    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...
    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, *, timeout: Timeouts
    ) -> Response:
        """Any method: stored responses are read (GET) and deleted (DELETE) too."""
        ...

    async def aclose(self) -> None: ...


class Timeouts:
    """Connect, and first byte / between bytes / a whole body's; and the size cap
    of a body read whole. Built once per config."""

    __slots__ = ("aiohttp", "connect", "httpx", "max_body", "read")

    def __init__(self, connect: float, read: float, max_body: int = MAX_BODY) -> None:
        self.connect = connect
        self.read = read
        self.max_body = max_body
        self.aiohttp = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        self.httpx = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


class Outcome(enum.Enum):
    OK = "ok"
    REDIRECT = "redirect"
    THROTTLED = "throttled"
    KEY_REJECTED = "key_rejected"
    NOT_FOUND = "not_found"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"


def classify(status: int) -> Outcome:
    """What a response status means for failover."""
    if status < 300:
        return Outcome.OK
    if status < 400:
        return Outcome.REDIRECT  # never followed nor relayed: an endpoint that moved
    if status == 429:
        return Outcome.THROTTLED
    if status in (401, 403):
        return Outcome.KEY_REJECTED
    if status == 404:
        return Outcome.NOT_FOUND  # DeploymentNotFound, or a wrong URL form for this resource
    if status == 408 or status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.CLIENT_ERROR


# --- aiohttp ---------------------------------------------------------------------


def too_large(declared: str | None, limit: int) -> StreamBroken | None:
    """The error for a body whose `content-length` is over `limit`, if it is."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return StreamBroken(f"response body of {declared} bytes is over the {limit}-byte limit")
    return None


def over_limit(limit: int) -> StreamBroken:
    return StreamBroken(f"response body is over the {limit}-byte limit")


def incomplete(seconds: float) -> StreamBroken:
    return StreamBroken(f"response body not complete within {seconds:g}s of its headers")


async def read_whole(pieces: AsyncIterator[bytes], declared: str | None, limits: Timeouts) -> bytes:
    """A body read whole within `limits` (size, total time); the library's own
    errors pass through for the caller to translate."""
    limit = limits.max_body
    error = too_large(declared, limit)
    if error is not None:
        raise error
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read):
            async for piece in pieces:
                size += len(piece)
                if size > limit:
                    raise over_limit(limit)
                parts.append(piece)
    except TimeoutError:
        raise incomplete(limits.read) from None
    return b"".join(parts)


class _AiohttpResponse:
    __slots__ = ("_resp", "_timeout", "status")

    def __init__(self, resp: aiohttp.ClientResponse, timeout: Timeouts) -> None:
        self._resp = resp
        self._timeout = timeout
        self.status = resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self) -> bytes:
        resp = self._resp
        try:
            return await read_whole(
                resp.content.iter_any(), resp.headers.get("content-length"), self._timeout
            )
        except aiohttp.ClientError as exc:
            raise StreamBroken(_describe(exc)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise StreamBroken(_describe(exc)) from None

    async def aclose(self) -> None:
        # Released when fully read (connection back to the pool), else closed.
        self._resp.release() if self._resp.content.at_eof() else self._resp.close()


class AiohttpUpstream:
    def __init__(self, trust_env: bool = False) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=trust_env,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            headers={"user-agent": "aoai-gateway"},
            max_headers=MAX_HEADERS,
            max_field_size=MAX_FIELD,
            max_line_size=MAX_FIELD,
        )

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, *, timeout: Timeouts
    ) -> Response:
        try:
            resp = await self._session.request(
                method,
                url,
                data=body_bytes(body),
                headers=headers,
                timeout=timeout.aiohttp,
                allow_redirects=False,
            )
        except TimeoutError:
            raise TimedOut(f"no response within {timeout.read:g}s") from None
        except aiohttp.ClientError as exc:
            raise ConnectFailed(_describe(exc)) from None
        return _AiohttpResponse(resp, timeout)

    async def aclose(self) -> None:
        await self._session.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):  # its text may quote upstream bytes
        return f"invalid HTTP response ({type(exc).__name__})"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


# --- httpx -----------------------------------------------------------------------


class _HttpxResponse:
    __slots__ = ("_resp", "_timeout", "status")

    def __init__(self, resp: httpx.Response, timeout: Timeouts) -> None:
        self._resp = resp
        self._timeout = timeout
        self.status = resp.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self) -> bytes:
        resp = self._resp
        try:
            return await read_whole(
                resp.aiter_raw(), resp.headers.get("content-length"), self._timeout
            )
        except httpx.TransportError as exc:
            raise StreamBroken(_describe(exc)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.aiter_raw():
                yield data
        except httpx.TransportError as exc:
            raise StreamBroken(_describe(exc)) from None

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxUpstream:
    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient()

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, *, timeout: Timeouts
    ) -> Response:
        request = self._client.build_request(
            method, url, headers=headers, content=body_bytes(body), timeout=timeout.httpx
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise TimedOut(f"no response within {timeout.read:g}s") from None
        except httpx.TransportError as exc:
            raise ConnectFailed(_describe(exc)) from None
        return _HttpxResponse(resp, timeout)

    async def aclose(self) -> None:
        await self._client.aclose()
