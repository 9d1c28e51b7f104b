"""app.disconnect: listening for a hang-up starts only for requests still running."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from app.disconnect import Watch, Watches


@dataclass
class Rec:
    ended: bool = False


class Client:
    """receive() as uvicorn gives it: blocks until the client goes away."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.calls = 0

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def request(watches: Watches, client: Client, rec: Rec, runs: float) -> tuple[str, Watch]:
    task = asyncio.current_task()
    assert task is not None
    watch = Watch(client.receive, task, rec)
    watches.arm(watch)
    try:
        await asyncio.sleep(runs)
        return "finished", watch
    except asyncio.CancelledError:
        task.uncancel()
        return "cancelled", watch
    finally:
        watches.disarm(watch)


@pytest.mark.anyio
async def test_a_short_request_never_listens() -> None:
    watches = Watches(after=0.05)
    client = Client()
    outcome, watch = await request(watches, client, Rec(), 0.001)
    await asyncio.sleep(0.1)
    assert outcome == "finished"
    assert watch.watcher is None and client.calls == 0
    watches.close()


@pytest.mark.anyio
async def test_a_long_request_is_cancelled_when_its_client_goes() -> None:
    watches = Watches(after=0.02)
    client = Client()
    running = asyncio.ensure_future(request(watches, client, Rec(), 5))
    await asyncio.sleep(0.1)
    assert client.calls == 1  # listening now
    client.gone.set()
    outcome, watch = await asyncio.wait_for(running, 2)
    assert outcome == "cancelled" and watch.gone
    watches.close()


@pytest.mark.anyio
async def test_the_disconnect_after_the_last_byte_is_not_a_hang_up() -> None:
    watches = Watches(after=0.02)
    client = Client()
    rec = Rec()
    running = asyncio.ensure_future(request(watches, client, rec, 0.3))
    await asyncio.sleep(0.1)
    rec.ended = True
    client.gone.set()  # uvicorn reports this once the response is complete
    outcome, watch = await asyncio.wait_for(running, 2)
    assert outcome == "finished" and not watch.gone
    watches.close()


@pytest.mark.anyio
async def test_watches_start_in_arming_order_and_only_when_due() -> None:
    watches = Watches(after=0.05)
    clients = [Client() for _ in range(3)]
    runs = [
        asyncio.ensure_future(request(watches, c, Rec(), 0.4 if i else 0.001))
        for i, c in enumerate(clients)
    ]
    await asyncio.sleep(0.2)
    assert [c.calls for c in clients] == [0, 1, 1]  # the quick one finished before its time
    for c in clients:
        c.gone.set()
    results = await asyncio.gather(*runs)
    assert [r[0] for r in results] == ["finished", "cancelled", "cancelled"]
    watches.close()
