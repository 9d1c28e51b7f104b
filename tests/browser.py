"""Headless Chromium (Debian's `chromium`) for the browser tests.

Skipped when the browser is missing, except under CI=true, where it must run.
The flags keep it off the network beyond what the page loads: this machine's
closed network refuses Chromium's background connections.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = "chromium is not installed (Debian package `chromium`)"
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the browser tests must run)")
    pytest.skip(why)


def browse(
    url: str, profile: Path, *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run Chromium headless on `url` with a fresh profile and extra `args`."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)
