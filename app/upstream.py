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

Each client library's exceptions are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
import httpx


class UpstreamError(Exception):
    """An attempt failed before or while reading the response."""


class TimedOut(UpstreamError):
    pass


class ConnectFailed(UpstreamError):
    pass


class StreamBroken(UpstreamError):
    """The response body ended early or the connection dropped mid-body."""


class Response(Protocol):
    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...
    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timeout: Timeouts
    ) -> Response: ...
    async def aclose(self) -> None: ...


class Timeouts:
    """Connect, and first byte / between bytes; built once per config."""

    __slots__ = ("aiohttp", "connect", "httpx", "read")

    def __init__(self, connect: float, read: float) -> None:
        self.connect = connect
        self.read = read
        self.aiohttp = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        self.httpx = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


class Outcome(enum.Enum):
    OK = "ok"
    THROTTLED = "throttled"
    KEY_REJECTED = "key_rejected"
    NOT_FOUND = "not_found"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"


def classify(status: int) -> Outcome:
    """What a response status means for failover."""
    if status < 300:
        return Outcome.OK
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


class _AiohttpResponse:
    __slots__ = ("_resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
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
        )

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timeout: Timeouts
    ) -> Response:
        try:
            resp = await self._session.post(
                url, data=body, headers=headers, timeout=timeout.aiohttp
            )
        except TimeoutError:
            raise TimedOut(f"no response within {timeout.read:g}s") from None
        except aiohttp.ClientError as exc:
            raise ConnectFailed(_describe(exc)) from None
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        await self._session.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


# --- httpx -----------------------------------------------------------------------


class _HttpxResponse:
    __slots__ = ("_resp", "status")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
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

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timeout: Timeouts
    ) -> Response:
        request = self._client.build_request(
            "POST", url, headers=headers, content=body, timeout=timeout.httpx
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise TimedOut(f"no response within {timeout.read:g}s") from None
        except httpx.TransportError as exc:
            raise ConnectFailed(_describe(exc)) from None
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()
