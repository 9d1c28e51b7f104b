"""A real headless Chromium on a page from another origin, calling the gateway with fetch.

The page (served by a tiny HTTP server on its own port, so its own origin) posts a
streamed chat, reads the stream with a reader, and writes what it saw into the DOM,
which `chromium --dump-dom` prints. A listed origin gets the whole answer and can read
the exposed headers; an unlisted one is stopped by the browser at the preflight, so
the chat request never leaves it. Without Chromium the tests skip, except under CI.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.browser import browse
from tests.conftest import GATEWAY_KEY, base_config

PAGE = b"""<!doctype html>
<html><body><pre id="result">pending</pre><script>
const q = new URLSearchParams(location.search);
(async () => {
  const out = {};
  try {
    const r = await fetch(q.get('gateway') + '/v1/chat/completions', {
      method: 'POST',
      headers: {
        'Authorization': 'Bearer ' + q.get('key'),
        'Content-Type': 'application/json',
        'x-stainless-lang': 'js',
      },
      body: JSON.stringify({
        model: q.get('model'), stream: true,
        messages: [{role: 'user', content: 'hello browser'}],
      }),
    });
    out.status = r.status;
    out.requestId = r.headers.get('x-request-id');
    out.retryAfter = r.headers.get('retry-after');
    out.contentType = r.headers.get('content-type');
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let raw = '';
    out.reads = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      out.reads += 1;
      raw += decoder.decode(value, {stream: true});
    }
    out.raw = raw;
    if (r.ok) {
      out.text = '';
      out.events = 0;
      out.allHaveChoices = true;
      for (const event of raw.split('\\n\\n')) {
        if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
        const chunk = JSON.parse(event.slice(6));
        out.events += 1;
        if (!Array.isArray(chunk.choices)) out.allHaveChoices = false;
        else if (chunk.choices.length) out.text += chunk.choices[0].delta.content || '';
      }
      out.done = raw.endsWith('data: [DONE]\\n\\n');
    }
  } catch (e) {
    out.error = String(e);
  }
  document.getElementById('result').textContent = JSON.stringify(out);
})();
</script></body></html>
"""

RESULT = re.compile(r'<pre id="result">(.*?)</pre>', re.S)


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[Any]:
    """Start page servers on their own ports; each is an origin of its own."""
    servers: list[ThreadingHTTPServer] = []

    def start() -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def open_page(origin: str, gateway: str, model: str, tmp_path: Path) -> dict[str, Any]:
    """Load the page in headless Chromium; return what it wrote into the DOM."""
    url = f"{origin}/chat.html?" + urlencode(
        {"gateway": gateway, "key": GATEWAY_KEY, "model": model}
    )
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    proc = browse(
        url,
        profile,
        "--virtual-time-budget=30000",  # virtual time waits for network loads
        "--dump-dom",
        check=False,
    )
    found = RESULT.search(proc.stdout)
    assert found, f"no result in the page (exit {proc.returncode}): {proc.stderr[-2000:]}"
    text = html.unescape(found.group(1))
    assert text != "pending", f"the page never finished: {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(text)
    return result


def cors_config(sim: Any, *origins: str) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"]["cors_origins"] = list(origins)
    return config


def test_listed_origin_streams_a_chat_in_the_browser(
    sim: Any, start_gateway: Any, page_origin: Any, tmp_path: Path
) -> None:
    origin = page_origin()
    gw = start_gateway(cors_config(sim, origin))

    seen = open_page(origin, gw.url, "gpt-4o", tmp_path)
    assert "error" not in seen, seen
    assert seen["status"] == 200
    assert seen["contentType"].startswith("text/event-stream")
    assert seen["text"] == "You said: hello browser"
    assert seen["allHaveChoices"] is True
    assert seen["events"] >= 3
    assert seen["done"] is True
    assert re.fullmatch(r"[0-9a-f]{16,}", seen["requestId"] or ""), seen  # exposed
    assert len(sim["sweden"].requests()) == 1


def test_listed_origin_can_read_retry_after_on_429(
    sim: Any, start_gateway: Any, page_origin: Any, tmp_path: Path
) -> None:
    origin = page_origin()
    gw = start_gateway(cors_config(sim, origin))
    sim["eastus"].fault("429", retry_after=7)

    seen = open_page(origin, gw.url, "gpt-4o-mini", tmp_path)
    assert "error" not in seen, seen
    assert seen["status"] == 429
    assert seen["retryAfter"] is not None and int(seen["retryAfter"]) >= 1  # exposed
    assert seen["requestId"]
    assert json.loads(seen["raw"])["error"]["code"] == "rate_limit_exceeded"


def test_unlisted_origin_is_blocked_by_the_browser(
    sim: Any, start_gateway: Any, page_origin: Any, tmp_path: Path
) -> None:
    listed, unlisted = page_origin(), page_origin()
    gw = start_gateway(cors_config(sim, listed))

    seen = open_page(unlisted, gw.url, "gpt-4o", tmp_path)
    assert seen == {"error": "TypeError: Failed to fetch"}
    # stopped at the preflight: the chat request never reached the gateway's upstreams
    assert sim["sweden"].requests() == []
    assert sim["eastus"].requests() == []
