"""app/attemptlog.py: one warning per kind of failure, repeats summed up after the window."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.attemptlog import AttemptLog, what_failed
from app.upstream import ConnectFailed, TimedOut


def test_what_failed_names_timeouts_tls_and_connect_errors() -> None:
    assert what_failed(TimedOut("no response within 5s")) == "timeout (no response within 5s)"
    tls = ConnectFailed("cannot connect to x:443: [SSL: CERTIFICATE_VERIFY_FAILED] bad")
    assert what_failed(tls).startswith("TLS error (")
    assert what_failed(ConnectFailed("cannot connect to x:443: refused")).startswith(
        "connect error ("
    )


def test_repeats_are_counted_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test_attemptlog")

    async def run() -> None:
        attempts = AttemptLog(log, window=0.05)
        for _ in range(4):
            attempts.failed("eastus", "gpt-4o", "eastus#abc", "HTTP 500")
        attempts.failed("eastus", "gpt-4o", "eastus#abc", "HTTP 503")  # another kind: at once
        await asyncio.sleep(0.1)
        attempts.failed("eastus", "gpt-4o", "eastus#abc", "HTTP 500")  # a new window
        attempts.close()

    with caplog.at_level(logging.WARNING, logger="test_attemptlog"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == [
        "upstream attempt failed: resource eastus, deployment gpt-4o, key eastus#abc: HTTP 500",
        "upstream attempt failed: resource eastus, deployment gpt-4o, key eastus#abc: HTTP 503",
        "upstream attempt failed 3 more times in the last 0.05 s: resource eastus, "
        "deployment gpt-4o, key eastus#abc: HTTP 500",
        "upstream attempt failed: resource eastus, deployment gpt-4o, key eastus#abc: HTTP 500",
    ]
