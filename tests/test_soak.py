"""The soak test of issue 10: normal, hostile and hung-up clients at once, for a while.

One gateway (with keys and short caller limits) over the simulated regions, and
at most 200 loopback connections from this process:

- normal callers: plain and streamed chats over kept-alive connections, each
  answered in full;
- hostile ones: silent connections, heads trickled a byte at a time, heads over
  the size limit, keyless 9.5 MB bodies, bodies trickled by a valid key;
- hung-up ones: streams closed after their first chunk, bodies cut off halfway.

It asserts that every normal request was answered, and that the gateway's RSS
and open file descriptors stay flat: the hostile load costs nothing that stays.

`AOAI_SOAK_SECONDS` sets the duration (default 30 s, at most 120: the issue's
"2 minutes" is `AOAI_SOAK_SECONDS=120`); the assertions are the same for any.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import GATEWAY_KEY, Gateway, Sim, base_config, launch_gateway
from tests.test_callers import chat_head, rss_kib

SECONDS = min(float(os.environ.get("AOAI_SOAK_SECONDS", "30")), 120.0)
LIMITS = {"head_timeout": 2.0, "body_timeout": 2.0, "keep_alive_timeout": 2.0}
# Connections by kind; 200 in all at most.
NORMAL, SILENT, SLOW_HEAD, BIG_HEAD, KEYLESS_BODY, SLOW_BODY, HANG_UP = 24, 40, 40, 16, 24, 24, 24
MB = 1024 * 1024

pytestmark = pytest.mark.slow


@dataclass
class Tally:
    answered: int = 0
    failed: list[str] = field(default_factory=list)
    hostile: int = 0  # hostile and hung-up connections made
    held: int = 0  # of those, the ones the gateway did not close in time
    peak_callers: int = 0  # caller connections the gateway held at once, at most


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def caller_sockets(pid: int, port: int) -> int:
    """The gateway's open sockets accepted on `port` (callers' connections, not upstream)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] != "0A" and fields[9] in inodes:  # 0A: LISTEN
            count += 1
    return count


@pytest.fixture(scope="module")
def gw(sims: dict[str, Sim], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = base_config(sims)
    config["gateway"] = {**config["gateway"], **LIMITS}
    gateway = launch_gateway(tmp_path_factory.mktemp("soak"), 0, config, "--no-access-log")
    yield gateway
    gateway.stop()


async def normal(gw: Gateway, n: int, until: float, tally: Tally) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"soak {n}"}]}
    want = f"You said: soak {n}"
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=30) as client:
        while time.monotonic() < until:
            stream = n % 2 == 0
            try:
                if stream:
                    text = ""
                    async with client.stream(
                        "POST", "/chat/completions", json={**body, "stream": True}
                    ) as r:
                        assert r.status_code == 200, r.status_code
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                for choice in orjson.loads(line[6:])["choices"]:
                                    text += choice["delta"].get("content") or ""
                else:
                    r = await client.post("/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    text = r.json()["choices"][0]["message"]["content"]
                assert text == want, text
                tally.answered += 1
            except Exception as exc:
                tally.failed.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.05)


async def connection(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.port)


async def until_closed(reader: asyncio.StreamReader, limit: float) -> bool:
    """True once the server closed the connection, False if it still held it after `limit` s."""
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed as well
    return True


async def sent_then_closed(gw: Gateway, *chunks: bytes) -> bool:
    """Send `chunks`, then wait up to 10 s for the server to close the connection."""
    reader, writer = await connection(gw)
    with contextlib.suppress(OSError):
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
    closed = await until_closed(reader, 10)
    writer.close()
    return closed


async def trickled(gw: Gateway, first: bytes, rest: bytes, gap: float) -> bool:
    """Send `first`, then `rest` a byte every `gap` s; True once the server cut it off."""
    reader, writer = await connection(gw)
    try:
        writer.write(first)
        for byte in rest:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(gap)
            if reader.at_eof():
                return True
        return False
    except OSError:
        return True
    finally:
        writer.close()


async def silent(gw: Gateway) -> bool:
    return await sent_then_closed(gw)


async def slow_head(gw: Gateway) -> bool:
    """A head at 5 bytes a second would take 20 s: the server must cut it off."""
    return await trickled(gw, b"", chat_head(100), 0.2)


async def big_head(gw: Gateway) -> bool:
    return await sent_then_closed(
        gw, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * MB
    )


async def keyless_body(gw: Gateway) -> bool:
    return await sent_then_closed(gw, chat_head(int(9.5 * MB)), *[b"x" * (256 * 1024)] * 8)


async def slow_body(gw: Gateway) -> bool:
    """A body at 10 bytes a second would take 100 s: the server must cut it off."""
    head = chat_head(1000, f"Authorization: Bearer {GATEWAY_KEY}")
    return await trickled(gw, head, b" " * 100, 0.1)


async def hang_up(gw: Gateway, n: int) -> bool:
    reader, writer = await connection(gw)
    body = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "bye"}], "stream": True}
    )
    with contextlib.suppress(OSError):
        if n % 2:  # half a body, then gone
            writer.write(chat_head(len(body), f"Authorization: Bearer {GATEWAY_KEY}"))
            writer.write(body[: len(body) // 2])
            await writer.drain()
        else:  # a stream, gone after its first bytes
            writer.write(chat_head(len(body), f"Authorization: Bearer {GATEWAY_KEY}") + body)
            await writer.drain()
            await reader.read(100)
    writer.close()
    return True  # the caller left; the gateway has nothing to hold


async def repeat(make: Callable[[], Awaitable[bool]], until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        try:
            if not await make():
                tally.held += 1  # the gateway kept a hostile connection open
        except OSError:
            await asyncio.sleep(0.1)  # refused: the listener is saturated, try again
        tally.hostile += 1


async def run(gw: Gateway, seconds: float, samples: list[tuple[float, int, int]]) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    pid = gw.proc.pid
    peak = [0]

    async def sample() -> None:
        while time.monotonic() < until:
            samples.append((time.monotonic(), rss_kib(pid), fds(pid)))
            peak.append(caller_sockets(pid, gw.port))
            await asyncio.sleep(0.5)

    kinds: list[tuple[int, Callable[[int], Awaitable[bool]]]] = [
        (SILENT, lambda n: silent(gw)),
        (SLOW_HEAD, lambda n: slow_head(gw)),
        (BIG_HEAD, lambda n: big_head(gw)),
        (KEYLESS_BODY, lambda n: keyless_body(gw)),
        (SLOW_BODY, lambda n: slow_body(gw)),
        (HANG_UP, lambda n: hang_up(gw, n)),
    ]
    tasks = [normal(gw, n, until, tally) for n in range(NORMAL)]
    for count, kind in kinds:
        tasks += [repeat(lambda n=n, kind=kind: kind(n), until, tally) for n in range(count)]
    await asyncio.gather(sample(), *tasks)
    tally.peak_callers = max(peak)
    return tally


def quiet_fds(gw: Gateway, settle: float) -> int:
    """The fd count once every caller connection is gone (the kept-alive ones time out)."""
    time.sleep(settle)
    return fds(gw.proc.pid)


def test_soak_normal_hostile_and_hung_up_clients(gw: Gateway) -> None:
    assert NORMAL + SILENT + SLOW_HEAD + BIG_HEAD + KEYLESS_BODY + SLOW_BODY + HANG_UP <= 200
    settle = LIMITS["keep_alive_timeout"] + 1.5
    # Warm up: pools, caches and the status window fill with normal traffic alone.
    warm = asyncio.run(run_normal_only(gw, 3.0))
    assert warm.answered > 0 and not warm.failed, warm.failed[:5]
    fds_before = quiet_fds(gw, settle)
    rss_before = rss_kib(gw.proc.pid)

    samples: list[tuple[float, int, int]] = []
    tally = asyncio.run(run(gw, SECONDS, samples))
    rss = [r for _, r, _ in samples]
    print(  # shown with -s: the numbers behind the assertions
        f"soak {SECONDS:g}s: {tally.answered} normal answered, {len(tally.failed)} failed, "
        f"{tally.hostile} hostile/hung-up connections, {tally.held} held; RSS "
        f"{rss_before} -> min {min(rss)} max {max(rss)} KiB; fds {fds_before} -> max "
        f"{max(f for *_, f in samples)}"
    )

    assert not tally.failed, f"{len(tally.failed)} normal requests failed: {tally.failed[:5]}"
    assert tally.answered >= NORMAL, tally.answered
    assert tally.hostile > 0 and tally.held == 0, (tally.hostile, tally.held)
    assert gw.proc.poll() is None
    # RSS: flat once the run is under way (the first quarter warms the hostile paths).
    start = samples[0][0]
    late = [rss for t, rss, _ in samples if t - start >= SECONDS / 4]
    early_peak = max(rss for t, rss, _ in samples if t - start < SECONDS / 4)
    assert max(late) - early_peak < 25 * 1024, (early_peak, max(late))
    assert max(late) - rss_before < 80 * 1024, (rss_before, max(late))
    # fds: bounded while the connections are open, back where they were after.
    assert max(f for _, _, f in samples) < fds_before + 200 + NORMAL + 20
    fds_after = quiet_fds(gw, settle)
    callers_after = caller_sockets(gw.proc.pid, gw.port)
    print(
        f"soak: fds {fds_before} before, {fds_after} after; caller sockets "
        f"{tally.peak_callers} at most, {callers_after} after"
    )
    assert tally.peak_callers > NORMAL  # the count sees callers' connections while open
    assert callers_after == 0  # every caller connection closed
    # the rest is the upstream pool, which holds at most one connection per caller in flight
    assert fds_after <= fds_before + NORMAL + HANG_UP, (fds_before, fds_after)
    logs = gw.logs()
    assert "Traceback" not in logs and "Exception in ASGI application" not in logs


async def run_normal_only(gw: Gateway, seconds: float) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    await asyncio.gather(*(normal(gw, n, until, tally) for n in range(NORMAL)))
    return tally
