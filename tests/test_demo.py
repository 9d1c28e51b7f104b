"""`aoai-gateway demo`: the README's first command, run as a user would."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ROOT, free_port, stop, wait_http


def command() -> list[str]:
    script = Path(sys.executable).parent / "aoai-gateway"
    found = str(script) if script.exists() else shutil.which("aoai-gateway")
    assert found, "the aoai-gateway console script is not installed (pip install -e .)"
    return [found]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*command(), "demo", "--port", str(port)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}", proc, out
    finally:
        stop(proc, signal.SIGINT)


def test_demo_streams_then_fails_over_to_the_other_region(
    demo: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, proc, out = demo
    banner = out.read_text()
    assert f"base URL  {url}/v1" in banner
    assert f"curl -N {url}/v1/chat/completions" in banner
    assert f"API Host  {url}/v1" in banner and "API Path  /chat/completions" in banner
    assert f"curl -X POST {url}/demo/fail/eastus" in banner
    assert f"curl -N {url}/v1/responses" in banner and f"curl {url}/v1/embeddings" in banner
    assert f'base_url = "{url}/v1"' in banner and 'wire_api = "responses"' in banner

    client = openai.OpenAI(base_url=url + "/v1", api_key="demo", max_retries=0)
    ask = [{"role": "user", "content": "Hello from the demo"}]

    def stream_chat() -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=ask, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return raw.headers["x-ms-region"], text

    assert stream_chat() == ("eastus", "You said: Hello from the demo")

    # the Responses API, plain then a streamed follow-up, and embeddings
    made = client.responses.with_raw_response.create(model="gpt-4o", input="Hello from the demo")
    assert made.headers["x-ms-region"] == "eastus"
    first = made.parse()
    assert first.output_text == "You said: Hello from the demo"
    with client.responses.stream(
        model="gpt-4o", input="and again", previous_response_id=first.id
    ) as stream:
        assert stream.get_final_response().output_text == "You said: and again"
    vectors = client.embeddings.create(
        model="text-embedding-3-small", input=["one", "two"], dimensions=8
    )
    assert [len(v.embedding) for v in vectors.data] == [8, 8]

    failed = httpx.post(url + "/demo/fail/eastus", headers={"x-request-id": "demo-req-1"})
    assert failed.status_code == 200
    assert failed.headers["x-request-id"] == "demo-req-1"
    assert failed.json()["regions"]["eastus"] == {"failing": True}
    for _ in range(2):  # the first finds eastus failing, the next skips it while it cools down
        assert stream_chat() == ("sweden", "You said: Hello from the demo")

    page = httpx.get(url + "/status").text  # the failing region is visible
    eastus_row = page[page.index("<b>eastus</b> / gpt-4o<") :].split("</tr>")[0]
    assert "failing (HTTP 500), cooling down until" in eastus_row

    recovered = httpx.post(url + "/demo/recover/eastus")
    assert recovered.json()["regions"]["eastus"] == {"failing": False}
    assert httpx.get(url + "/demo").json()["regions"] == {
        "eastus": {"failing": False},
        "sweden": {"failing": False},
    }
    bad = httpx.post(url + "/demo/fail/westus")
    assert bad.status_code == 404 and "westus" in bad.json()["error"]["message"]
    assert (
        len(bad.headers["x-request-id"]) == 24 and httpx.get(url + "/demo").headers["x-request-id"]
    )
    assert httpx.get(url + "/demo/fail/eastus").status_code == 405

    page = httpx.get(url + "/status")
    assert page.status_code == 200 and "cooling down until" in page.text

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(15) == 0
    log = out.read_text()
    assert "served by sweden/gpt-4o" in log and "demo stopped" in log
    assert "  200 GET /status in " in log and "None" not in log  # other routes read right too
    assert "gpt-4o responses stream served by eastus/gpt-4o" in log
    assert "text-embedding-3-small embeddings request served by eastus" in log
    assert "Traceback" not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz", timeout=2)


def test_demo_refuses_a_busy_port_and_a_public_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [*command(), "demo", "--port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert taken.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr

    public = subprocess.run(
        [*command(), "demo", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert public.returncode == 2
    assert "loopback" in public.stderr
