"""Real Redis for the `redis` tests: a private DB on the shared server, or a private server.

Without a Redis at 127.0.0.1:6379 (or without `redis-server` for a private
one) the tests skip, except under `CI`, where they fail: CI must run them.
The shared server is never stopped; outage tests start their own.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.conftest import free_port

SHARED = ("127.0.0.1", 6379)


def unavailable(why: str) -> None:
    """Skip, or fail under CI (where the Redis tests are mandatory)."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the redis tests must run)")
    pytest.skip(why)


@contextlib.contextmanager
def private_db() -> Iterator[str]:
    """A URL for an empty DB on the shared Redis, flushed afterwards.

    Request this fixture before `start_gateway`, so the gateways (which flush
    usage when they stop) are stopped before the DB is flushed.
    """
    host, port = SHARED
    try:
        with redis.Redis(host=host, port=port, socket_timeout=1) as client:
            client.ping()
    except redis.RedisError as exc:
        unavailable(f"no redis at {host}:{port}: {exc}")
    for db in random.sample(range(1, 16), 15):
        client = redis.Redis(host=host, port=port, db=db, socket_timeout=1)
        # claim the DB: a marker set only if the DB is empty, so parallel runs never share one
        if client.dbsize() == 0 and client.set("aoai-gateway-test:claim", "1", nx=True, ex=600):
            try:
                yield f"redis://{host}:{port}/{db}"
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    unavailable(f"no empty DB left on redis at {host}:{port}")


@dataclass
class RedisServer:
    """A redis-server of our own, on a free port: this one may be stopped."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        assert binary is not None
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(  # no files: a throwaway server
            [binary, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_timeout=0.5) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP/SIGCONT: a Redis that accepts connections and never answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def private_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
