"""Usage per key x model: app.usage on its own, then through the gateway (plain, streamed,
restart, admin-only access, hashed keys)."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.usage import FIELDS, Batch, SQLiteStore, StoreUnavailable, Tally, Usage, today
from tests.conftest import GATEWAY_KEY, base_config

ADMIN_KEY = "test-gateway-key-ops"
BOB = "test-gateway-key-bob"
HELLO = [{"role": "user", "content": "hello there"}]  # 5 prompt + 4 completion tokens


# --- app.usage ------------------------------------------------------------------


class FlakyStore:
    """A store that fails while `down` is set."""

    def __init__(self) -> None:
        self.down = True
        self.rows: Tally = {}

    async def add(self, tally: Tally, batch: Batch) -> None:
        if self.down:
            raise StoreUnavailable("store down")
        for row, counts in tally.items():
            mine = self.rows.setdefault(row, {})
            for name, n in counts.items():
                mine[name] = mine.get(name, 0) + n

    async def read(self, since: str | None) -> Tally:
        return dict(self.rows)

    async def close(self) -> None:
        return None


@pytest.mark.anyio
async def test_sqlite_usage_survives_reopening_and_filters_by_day(tmp_path: Path) -> None:
    path = str(tmp_path / "usage.db")
    usage = Usage(SQLiteStore(path))
    usage.record("alice", "gpt-4o", {"prompt_tokens": 10, "completion_tokens": 3}, 55_000)
    usage.record("alice", "gpt-4o", {"prompt_tokens": 1, "cached_tokens": 1}, None)
    # not flushed yet, but reported
    assert (await usage.report())["alice"]["gpt-4o"]["requests"] == 2
    await usage.close()  # flushes
    await SQLiteStore(path).add({("2020-01-01", "bob", "o3-mini"): {"requests": 1}}, Batch("t", 1))

    again = Usage(SQLiteStore(path))
    report = await again.report()
    assert report["alice"]["gpt-4o"] == {
        "requests": 2,
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "cached_tokens": 1,
        "reasoning_tokens": 0,
        "images": 0,
        "audio_seconds": 0,
        "characters": 0,
        "cost_nusd": 55_000,
        "unpriced_requests": 1,
        "estimated_requests": 0,
    }
    assert set(report) == {"alice", "bob"}
    assert set(await again.report(today())) == {"alice"}
    again.record("alice", "gpt-4o", {"prompt_tokens": 5}, 12_500)
    assert await again.flush()
    assert (await again.report())["alice"]["gpt-4o"]["prompt_tokens"] == 16
    await again.close()


@pytest.mark.anyio
async def test_failed_flush_keeps_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aoai_gateway")
    store = FlakyStore()
    usage = Usage(store)
    for _ in range(3):
        usage.record("alice", "gpt-4o", {"prompt_tokens": 2}, 5_000)
        assert not await usage.flush()
    assert (await usage.report())["alice"]["gpt-4o"]["requests"] == 3  # still reported
    store.down = False
    assert await usage.flush()
    assert store.rows == {
        (today(), "alice", "gpt-4o"): {"requests": 3, "prompt_tokens": 6, "cost_nusd": 15_000}
    }
    assert (await usage.report())["alice"]["gpt-4o"]["requests"] == 3  # not counted twice
    messages = [r.getMessage() for r in caplog.records]
    assert sum("store failed" in m for m in messages) == 1, messages
    assert sum("answers again" in m for m in messages) == 1, messages


class AppliedThenLost(SQLiteStore):
    """Applies a batch, then fails as a timeout would: the caller cannot know it landed."""

    def __init__(self, path: str, lose: int) -> None:
        super().__init__(path)
        self.lose = lose
        self.batches: list[tuple[str, int]] = []

    async def add(self, tally: Tally, batch: Batch) -> None:
        self.batches.append((batch.writer, batch.seq))
        await super().add(tally, batch)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailable("timed out")


@pytest.mark.anyio
async def test_a_batch_whose_outcome_is_unknown_is_resent_as_is_and_counted_once(
    tmp_path: Path,
) -> None:
    """Issue 10: a batch re-applied after a store timeout counted its usage twice."""
    store = AppliedThenLost(str(tmp_path / "usage.db"), lose=2)
    usage = Usage(store)
    usage.record("alice", "gpt-4o", {"prompt_tokens": 2}, 1)
    assert not await usage.flush()  # applied, but the answer was lost
    usage.record("alice", "gpt-4o", {"prompt_tokens": 3}, 1)
    assert not await usage.flush()  # the same batch again first, lost again
    assert await usage.flush()  # the same batch once more (skipped), then the new one
    writer = store.batches[0][0]
    assert store.batches == [(writer, 1), (writer, 1), (writer, 1), (writer, 2)]
    report = await usage.report()
    assert report["alice"]["gpt-4o"]["requests"] == 2
    assert report["alice"]["gpt-4o"]["prompt_tokens"] == 5
    await usage.close()


@pytest.mark.anyio
async def test_sqlite_store_applies_each_batch_of_a_writer_once(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "usage.db"))
    row = ("2020-01-01", "bob", "o3-mini")
    for batch in (Batch("a", 1), Batch("a", 1), Batch("b", 1), Batch("a", 2), Batch("a", 1)):
        await store.add({row: {"requests": 1}}, batch)
    assert (await store.read(None))[row]["requests"] == 3
    await store.close()


# --- through the gateway ----------------------------------------------------------


def _config(sim: Any, tmp_path: Path) -> dict[str, Any]:
    config = base_config(sim)
    config["gateway"] = {
        "keys": [
            {"name": "alice", "key": GATEWAY_KEY},
            {"name": "ops", "key_sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
             "admin": True},
            {"name": "bob", "key_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
        ]
    }  # fmt: skip
    config["state"] = {"path": str(tmp_path / "state" / "usage.db")}
    return config


def _usage(gw: Any, key: str = ADMIN_KEY, **params: str) -> httpx.Response:
    return httpx.get(gw.url + "/admin/usage", headers={"api-key": key}, params=params, timeout=5)


def test_plain_and_streamed_usage_is_counted_even_when_the_client_did_not_ask(
    sim: Any, start_gateway: Any, tmp_path: Path
) -> None:
    gw = start_gateway(_config(sim, tmp_path))
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    done = client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert done.usage is not None and done.usage.total_tokens == 9

    raw = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    )
    assert raw.status_code == 200
    events = [e[len("data: ") :] for e in raw.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
        "You said: hello there"
    )
    # the usage chunk the gateway asked for stays behind ("usage": null fields are Azure's)
    assert [c for c in chunks if c.get("usage") or not c["choices"]] == []
    upstream = sim["sweden"].requests()[-1]["body"]
    assert upstream["stream_options"] == {"include_usage": True}

    asked = client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    usage_chunks = [c.usage for c in asked if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].total_tokens == 9

    reasoning = client.chat.completions.create(model="o3-mini", messages=HELLO, stream=True)
    assert all(c.usage is None for c in reasoning)

    report = _usage(gw).json()
    assert report["keys"]["alice"]["gpt-4o"] == {
        "requests": 3,
        "prompt_tokens": 15,
        "completion_tokens": 12,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "images": 0,
        "audio_seconds": 0,
        "characters": 0,
        # answered as gpt-4o-2024-11-20: $2.50 / $10 per 1M, 3 x (5 x 2.5 + 4 x 10) / 1M
        "cost_usd": pytest.approx(3 * 52_500e-9),
        "unpriced_requests": 0,
        "estimated_requests": 0,
    }
    o3 = report["keys"]["alice"]["o3-mini"]
    assert o3["requests"] == 1 and o3["reasoning_tokens"] == 16
    assert o3["completion_tokens"] == 4 + 16


def test_usage_survives_a_restart(sim: Any, start_gateway: Any, tmp_path: Path) -> None:
    config = _config(sim, tmp_path)
    gw = start_gateway(config)
    client = openai.OpenAI(base_url=gw.base_url, api_key=BOB, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    gw.stop(signal.SIGTERM)  # flushes what the 2 s timer has not
    assert "Application shutdown complete" in gw.logs()

    again = start_gateway(config)
    counts = _usage(again).json()["keys"]["bob"]["gpt-4o-mini"]
    assert counts["requests"] == 2
    assert counts["prompt_tokens"] == 10 and counts["completion_tokens"] == 8
    # and keeps adding to it
    openai.OpenAI(base_url=again.base_url, api_key=BOB, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO
    )
    assert _usage(again).json()["keys"]["bob"]["gpt-4o-mini"]["requests"] == 3


def test_admin_usage_is_for_admin_keys_only(sim: Any, start_gateway: Any, tmp_path: Path) -> None:
    gw = start_gateway(_config(sim, tmp_path))
    # a hashed key works for chat ...
    bob = openai.OpenAI(base_url=gw.base_url, api_key=BOB, max_retries=0)
    assert bob.chat.completions.create(model="gpt-4o", messages=HELLO).choices
    # ... and a hashed admin key reads usage
    ok = _usage(gw)
    assert ok.status_code == 200
    body = ok.json()
    assert body["keys"]["bob"]["gpt-4o"]["requests"] == 1
    assert set(body["keys"]["bob"]["gpt-4o"]) >= set(FIELDS)
    assert _usage(gw, since=today()).json()["keys"]["bob"]["gpt-4o"]["requests"] == 1
    assert _usage(gw, since="2999-01-01").json()["keys"] == {}

    for key, status in ((GATEWAY_KEY, 403), (BOB, 403), ("not-a-key", 401)):
        r = _usage(gw, key)
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    bearer = httpx.get(
        gw.url + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5
    )
    assert bearer.status_code == 200
    anonymous = httpx.get(gw.url + "/admin/usage", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    for bad in ("yesterday", "2024-13-45"):
        r = _usage(gw, since=bad)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    logs = gw.logs()
    assert ADMIN_KEY not in logs and BOB not in logs and "not-a-key" not in logs


def test_usage_counts_are_flushed_to_disk_while_running(
    sim: Any, start_gateway: Any, tmp_path: Path
) -> None:
    config = _config(sim, tmp_path)
    gw = start_gateway(config)
    httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=10,
    ).raise_for_status()
    store = SQLiteStore(config["state"]["path"])
    deadline = time.monotonic() + 10  # flushed every 2 s
    rows: Tally = {}
    while time.monotonic() < deadline and not rows:
        rows = store._read(None)
        time.sleep(0.2)
    assert rows == {
        (today(), "alice", "gpt-4o"): {
            "requests": 1,
            "prompt_tokens": 5,
            "completion_tokens": 4,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "images": 0,
            "audio_seconds": 0,
            "characters": 0,
            "cost_nusd": 52_500,
            "unpriced_requests": 0,
            "estimated_requests": 0,
        }
    }
    store._db.close()
