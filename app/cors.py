"""CORS as plain ASGI, for browser front-ends calling the gateway directly.

Origins come from `gateway.cors_origins` of the configuration in force (so a
reload changes them); empty means no CORS headers at all. A preflight from a
listed origin is answered here, before authentication; one from any other
origin gets a 400 without `access-control-allow-origin`, so the browser
blocks the request before it is sent. For the request itself only
`http.response.start` is touched: streamed chunks pass untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from app.handler import Message, Receive, Scope, Send

# Request headers a browser client may send: the OpenAI and Azure SDKs' own
# (`x-stainless-*` is matched by prefix), the ai-sdk's and the usual ones.
ALLOWED_HEADERS = frozenset(
    {
        "accept",
        "api-key",
        "authorization",
        "content-type",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "user-agent",
        "x-ms-client-request-id",
        "x-ms-useragent",
        "x-request-id",
        "x-requested-with",
    }
)
ALLOWED_PREFIXES = ("x-stainless-",)
DEFAULT_ALLOW = b"authorization, content-type, api-key"
EXPOSED = (
    b"x-request-id, retry-after, retry-after-ms, x-ms-region, apim-request-id, "
    b"x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens"
)
METHODS = b"GET, POST, OPTIONS"
MAX_AGE = b"600"
VARY = (b"vary", b"Origin")


def header_allowed(name: str) -> bool:
    return name in ALLOWED_HEADERS or name.startswith(ALLOWED_PREFIXES)


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    return origin in allowed or "*" in allowed


def allow_headers(requested: bytes) -> bytes:
    """The `access-control-allow-headers` answer to `access-control-request-headers`.

    Only the allowed names are echoed, so a request with any other header is
    blocked by the browser; with none requested the common ones are listed.
    """
    names = [h.strip().lower() for h in requested.decode("latin-1").split(",")]
    allowed = [h for h in names if h and header_allowed(h)]
    return ", ".join(allowed).encode("latin-1") if allowed else DEFAULT_ALLOW


def preflight_headers(
    origin: str, request_headers: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Headers of the answer to an allowed origin's preflight."""
    requested = b""
    private_network = False
    for name, value in request_headers:
        if name == b"access-control-request-headers":
            requested = value
        elif name == b"access-control-request-private-network":
            private_network = value.strip().lower() == b"true"
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", METHODS),
        (b"access-control-allow-headers", allow_headers(requested)),
        (b"access-control-max-age", MAX_AGE),
        VARY,
    ]
    if private_network:  # Chrome, page on a public origin calling a LAN/loopback gateway
        headers.append((b"access-control-allow-private-network", b"true"))
    return headers


class CORS:
    def __init__(
        self, app: Callable[[Scope, Receive, Send], object], origins: Callable[[], Sequence[str]]
    ) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = self.origins()
        if scope["type"] != "http" or not allowed:  # CORS off: not even a header scan
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        origin = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        if origin is None:
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        ok = origin_allowed(origin, allowed)
        if preflight and scope["method"] == "OPTIONS":
            if ok:
                await _answer(send, 204, preflight_headers(origin, scope["headers"]))
            else:
                await _answer(send, 400, [VARY])
            return
        extra = [VARY]
        if ok:
            extra += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSED),
            ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)  # type: ignore[misc]


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
