"""CORS as plain ASGI, for browser front-ends calling the gateway directly.

Origins come from `gateway.cors_origins` of the configuration in force (so a
reload changes them); empty means no CORS headers at all. A preflight is
answered here, before authentication. Only `http.response.start` of a
request with an allowed `Origin` is touched: streamed chunks pass untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.proxy import Message, Receive, Scope, Send

ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "api-key",
        "x-request-id",
        "accept",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "user-agent",
    }
)
EXPOSED = b"x-request-id, retry-after, retry-after-ms, x-ms-region, apim-request-id"
METHODS = b"GET, POST, OPTIONS"


def header_allowed(name: str) -> bool:
    return name in ALLOWED_HEADERS or name.startswith("x-stainless-")


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    return "*" in allowed or origin in allowed


class CORS:
    def __init__(
        self, app: Callable[[Scope, Receive, Send], object], origins: Callable[[], Sequence[str]]
    ) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        origin = None
        requested = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                requested = value
        allowed = self.origins()
        if origin is None or not allowed:
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        ok = origin_allowed(origin, allowed)
        if scope["method"] == "OPTIONS" and requested is not None:
            await self._preflight(scope, send, origin if ok else None)
            return
        if not ok:
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        extra = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED),
            (b"vary", b"Origin"),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)  # type: ignore[misc]

    async def _preflight(self, scope: Scope, send: Send, origin: str | None) -> None:
        headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
        status = 400
        if origin is not None:
            status = 204
            asked = b""
            for name, value in scope["headers"]:
                if name == b"access-control-request-headers":
                    asked = value
            names = [h.strip().lower() for h in asked.decode("latin-1").split(",") if h.strip()]
            allow = (
                ", ".join(h for h in names if header_allowed(h)) or "authorization, content-type"
            )
            headers += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", METHODS),
                (b"access-control-allow-headers", allow.encode("latin-1")),
                (b"access-control-max-age", b"600"),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
