"""Fixtures for the simulator's tests: one fresh in-process `Simulator` per test.

(`serving.serve` runs one under uvicorn.) ``sim`` here is a single in-process resource; it
shadows the session simulators of the top-level conftest, which these tests do not use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.simulator import Simulator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sim() -> Simulator:
    return Simulator()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
        yield c
