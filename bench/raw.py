"""The cheapest upstream there is: asyncio + httptools answering canned chat completions.

    python -m bench.raw --port 8001

Every POST gets the same answer the simulator would give to the benchmark's request
(same bytes: `app.simulator.chat`), rendered once at start: a `chat.completion` with
usage, or, when the body asks for `"stream": true`, the whole SSE stream (role, five
content events, finish, usage, `[DONE]`) as one chunked response in one write. No
auth, no validation, no routing: against it a relay's own cost is what shows (the
simulator spends ~60-80 µs of CPU per request, this ~15). GET /healthz answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

import httptools
import orjson

from app.simulator.chat import _StreamFrames, completion_json, compute_answer, stream_frames

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_REQUEST = {"messages": [{"role": "user", "content": "Hello there, how are you today?"}]}


def _head(status: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 " + status] + [k + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _events(frames: _StreamFrames, words: list[str]) -> bytes:
    out = [frames.prompt_filter, frames.role]
    for w in words:
        out.append(frames.content_head + orjson.dumps(w) + frames.content_tail)
    out.append(frames.finish)
    if frames.usage is not None:
        out.append(frames.usage)
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def answers() -> tuple[bytes, bytes]:
    """(plain response, streamed response) as the bytes written to the socket."""
    answer = compute_answer(_REQUEST, "gpt-4o", None)
    body = completion_json(answer, "chatcmpl-raw0000000000000000000000", 1764633600)
    common = [(b"x-ms-region", b"Sweden Central"), (b"apim-request-id", b"raw")]
    plain = _head(
        b"200 OK",
        [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *common,
        ],
    )
    frames = stream_frames(answer, "chatcmpl-raw0000000000000000000000", 1764633600, True)
    events = _events(frames, [w + " " for w in answer.reply.split()][:5])
    stream = _head(
        b"200 OK",
        [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"transfer-encoding", b"chunked"),
            *common,
        ],
    )
    chunked = b"%x\r\n" % len(events) + events + b"\r\n0\r\n\r\n"
    return plain + body, stream + chunked


_HEALTH = _head(b"200 OK", [(b"content-type", b"text/plain"), (b"content-length", b"2")]) + b"ok"


class _Protocol(asyncio.Protocol):
    def __init__(self, plain: bytes, stream: bytes) -> None:
        self._plain, self._stream = plain, stream
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body.clear()
        if self._parser.get_method() == b"GET":
            out = _HEALTH
        else:
            out = self._stream if _STREAM.search(body) else self._plain
        self._transport.write(out)
        if not self._parser.should_keep_alive():
            self._transport.close()


async def serve(host: str, port: int) -> None:
    plain, stream = answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(plain, stream), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
