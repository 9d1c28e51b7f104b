"""Fault modes of an upstream that misbehaves on purpose (issue 10's hostile-upstream tests).

Each answers a request in place of the operation, before any answer exists:

- ``close``: read the request, wait ``delay`` seconds, then close the connection
  without sending a byte (the upstream may have processed it);
- ``echo``: a 400 whose body quotes the request's headers, ``api-key`` included,
  and an ``x-ratelimit-echo`` header carrying the key (a header the gateway passes on);
- ``redirect``: a 301 to another host;
- ``huge_body``: a 200 JSON body of ``size`` bytes, chunked (no length announced);
- ``drip``: a 200 whose announced body arrives one byte every ``delay`` seconds;
- ``huge_headers``: a 200 with ``size`` bytes of extra headers (4 KiB each);
- ``huge_line``: a 200 event stream whose first event is one line of ``size``
  bytes, followed by a normal end.

``close`` needs the connection itself, which ASGI does not expose: `abort` reaches
it through uvicorn's response cycle (the simulator always runs under uvicorn).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from app.simulator.asgi import CT_JSON, CT_SSE, Headers, Reply, Send, header, wait_disconnect

MODES: Final = frozenset(
    {"close", "echo", "redirect", "huge_body", "drip", "huge_headers", "huge_line"}
)
PIECE: Final = 64 * 1024
_COMPLETION: Final = (
    b'{"id":"chatcmpl-x","object":"chat.completion","choices":[{"index":0,"finish_reason":'
    b'"stop","message":{"role":"assistant","content":"'
)


def abort(send: Send) -> bool:
    """Close the request's connection without a response; False if not under uvicorn."""
    cycle: Any = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    cycle.disconnected = True  # so uvicorn sends no 500 for the response never started
    transport.close()
    return True


async def answer(mode: str, reply: Reply, headers: Headers, size: int, delay: float) -> int | None:
    """Answer as the fault ``mode`` says; the status sent, or None if none was."""
    if mode == "close":
        if delay > 0 and await wait_disconnect(reply.receive, delay):
            return None
        abort(reply.send)
        return None
    if mode == "echo":
        quoted = {n.decode("latin-1"): v.decode("latin-1") for n, v in headers}
        body = orjson.dumps(
            {
                "error": {
                    "code": "BadRequest",
                    "message": f"Request rejected; it was sent with headers {quoted}",
                }
            }
        )
        return await reply.json(400, body, [(b"x-ratelimit-echo", header(headers, b"api-key"))])
    if mode == "redirect":
        moved = [(b"location", b"https://elsewhere.invalid/openai/v1/chat/completions")]
        return await reply.json(301, b'{"error":{"code":"Moved"}}', moved)
    if mode == "huge_body":
        await reply.send(
            {"type": "http.response.start", "status": 200, "headers": reply.headers([CT_JSON])}
        )
        await reply.chunk(_COMPLETION)
        for sent in range(0, size, PIECE):
            await reply.chunk(b"x" * min(PIECE, size - sent))
        await reply.chunk(b'"}}]}', more=False)
        return 200
    if mode == "drip":
        body = _COMPLETION + b'hi"}}]}'
        extra = [CT_JSON, (b"content-length", b"%d" % len(body))]
        await reply.send(
            {"type": "http.response.start", "status": 200, "headers": reply.headers(extra)}
        )
        for i in range(len(body)):
            if await wait_disconnect(reply.receive, delay):
                return None
            await reply.chunk(body[i : i + 1], more=i + 1 < len(body))
        return 200
    if mode == "huge_headers":
        line = b"v" * 4096
        extra = [(b"x-filler-%d" % i, line) for i in range(max(1, size // len(line)))]
        return await reply.json(200, _COMPLETION + b'hi"}}]}', extra)
    if mode == "huge_line":
        await reply.start_stream(CT_SSE[1])
        await reply.chunk(b'data: {"choices":[{"delta":{"content":"')
        for sent in range(0, size, PIECE):
            await reply.chunk(b"x" * min(PIECE, size - sent))
        await reply.chunk(b'"},"index":0}]}\n\ndata: [DONE]\n\n', more=False)
        return 200
    raise ValueError(f"not a hostile mode: {mode!r}")
