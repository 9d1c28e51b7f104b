"""app/cors.py as plain ASGI, in process: preflight, allowed and unlisted origins.

The real browser is in tests/test_cors_browser.py; this pins each header.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.cors import CORS, allow_headers, header_allowed
from app.handler import Message

LISTED = "https://chat.example.com"


def run(
    origins: tuple[str, ...],
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], list[Message], bool]:
    """One request through CORS around a stub app; (status, headers, sent, app ran)."""
    sent: list[Message] = []
    ran = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran = True
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": "/v1/chat/completions",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(CORS(app, lambda: origins)(scope, receive, send))
    start = sent[0]
    names = [k.decode() for k, _ in start["headers"]]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    out = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out, sent, ran


def preflight(origin: str, **extra: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        **extra,
    }


def test_preflight_from_a_listed_origin_is_answered_without_auth() -> None:
    asked = "authorization,content-type,api-key,x-stainless-os,x-stainless-retry-count"
    status, headers, _, ran = run(
        (LISTED,), "OPTIONS", preflight(LISTED, **{"Access-Control-Request-Headers": asked})
    )
    assert status == 204
    assert not ran  # answered before the app (and so before authentication)
    assert headers["access-control-allow-origin"] == LISTED
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"].split(", ") == asked.split(",")
    assert int(headers["access-control-max-age"]) > 0
    assert headers["vary"] == "Origin"
    assert "access-control-allow-private-network" not in headers


def test_preflight_answers_private_network_access() -> None:
    _, headers, _, _ = run(
        (LISTED,),
        "OPTIONS",
        preflight(LISTED, **{"Access-Control-Request-Private-Network": "true"}),
    )
    assert headers["access-control-allow-private-network"] == "true"


def test_preflight_from_an_unlisted_origin_gets_no_allow_origin() -> None:
    status, headers, _, ran = run((LISTED,), "OPTIONS", preflight("https://evil.example"))
    assert status == 400
    assert not ran
    assert not any(h.startswith("access-control-") for h in headers)


def test_request_from_a_listed_origin_exposes_our_headers_and_streams_untouched() -> None:
    status, headers, sent, ran = run((LISTED,), "POST", {"Origin": LISTED})
    assert ran and status == 200
    assert headers["access-control-allow-origin"] == LISTED
    exposed = headers["access-control-expose-headers"].split(", ")
    assert {"x-request-id", "retry-after"} <= set(exposed)
    assert headers["content-type"] == "text/event-stream"
    assert sent[1] == {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}


def test_request_from_an_unlisted_origin_gets_no_allow_origin() -> None:
    status, headers, _, ran = run((LISTED,), "POST", {"Origin": "https://evil.example"})
    assert ran and status == 200  # the browser, not the gateway, withholds the answer
    assert not any(h.startswith("access-control-") for h in headers)
    assert headers["vary"] == "Origin"


@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
def test_no_origins_configured_means_no_cors_headers(method: str) -> None:
    _, headers, _, ran = run((), method, preflight(LISTED))
    assert ran  # not intercepted: the app answers (a chat route says 405 to OPTIONS)
    assert not any(h.startswith("access-control-") or h == "vary" for h in headers)


def test_wildcard_allows_any_origin() -> None:
    _, headers, _, _ = run(("*",), "POST", {"Origin": "http://localhost:3000"})
    assert headers["access-control-allow-origin"] == "http://localhost:3000"


def test_allowed_header_names() -> None:
    for name in ("authorization", "content-type", "api-key", "x-stainless-arch"):
        assert header_allowed(name)
    assert not header_allowed("cookie")
    assert allow_headers(b"Authorization, X-Custom, content-type") == b"authorization, content-type"
    assert allow_headers(b"") == b"authorization, content-type, api-key"
