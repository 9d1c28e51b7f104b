"""Hostile callers against the real server (issue 10, the caller's side).

A real `aoai-gateway serve` process, the simulated Azure resources, and raw
sockets where an HTTP client would be too polite: bodies sent to a gateway
that has not authenticated the caller, heads that never end, trickles.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import base_config

MB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw(port: int, data: bytes, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or the socket's timeout)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def chat_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- item 4: authenticate from the headers, before a byte of body ------------------------------


def test_unknown_caller_is_refused_before_its_body_is_read(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    for extra in ((), ("Authorization: Bearer wrong-key",)):
        # The head announces 9.5 MB and not one byte of it is sent: the answer must not wait.
        sock = raw(gw.port, chat_head(int(9.5 * MB), *extra), timeout=3)
        started = time.monotonic()
        answer = read_all(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"invalid_api_key"' in answer
        # read_all returns at the server's close: the body was neither awaited nor wanted.
        assert time.monotonic() - started < 2.5, "the gateway waited for the body"


def test_unauthenticated_huge_bodies_do_not_grow_memory(sim: Any, start_gateway: Any) -> None:
    gw = start_gateway(base_config(sim))
    before = rss_kib(gw.proc.pid)
    body = b"x" * int(9.5 * MB)
    answers: list[bytes] = []

    def attack() -> None:
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
            sock.sendall(chat_head(len(body)))
            for start in range(0, len(body), 256 * 1024):
                sock.sendall(body[start : start + 256 * 1024])
        except OSError:
            pass  # refused and closed: that is the point
        try:
            answers.append(read_all(sock)[:12])
        except OSError:
            answers.append(b"reset")
        finally:
            sock.close()

    threads = [threading.Thread(target=attack) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    after = rss_kib(gw.proc.pid)
    # Before the fix every body was buffered whole: +360 MB for 40 x 9.5 MB.
    assert after - before < 40 * 1024, (before, after)
    assert len(answers) == 40
    assert set(answers) <= {b"HTTP/1.1 401", b"", b"reset"}, set(answers)
    assert b"HTTP/1.1 401" in answers
