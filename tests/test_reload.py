"""Hot reload: SIGHUP and `serve --watch` swap the configuration without dropping streams."""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import GATEWAY_KEY, SIM_KEYS, Sim, start_sim, stop, wait_for


@pytest.fixture(scope="module")
def slow() -> Iterator[Sim]:
    """A region whose streams take about 2 s (8 chunks, 0.25 s apart)."""
    sim = start_sim("slow", "--chunk-delay", "0.25")
    yield sim
    stop(sim.proc)


def config_for(sim: Sim, models: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "gateway": {"keys": [{"name": "alice", "key": GATEWAY_KEY}]},
        "resources": {"slow": {"endpoint": sim.url, "keys": list(SIM_KEYS)}},
        "models": models,
    }


def rewrite(gw: Any, config: dict[str, Any]) -> None:
    """Write a new config, keeping the `state:` the gateway started with."""
    state = yaml.safe_load(gw.config_path.read_text())["state"]
    gw.write_config({**config, "state": state})


def models_of(gw: Any) -> list[str]:
    r = httpx.get(gw.base_url + "/models", headers=gw.headers())
    return sorted(m["id"] for m in r.json()["data"])


def stream_while(
    gw: Any, model: str, during: Callable[[], None], poll: Callable[[], bool]
) -> tuple[str, bool]:
    """Stream a chat; after its first content chunk run `during`, then `poll` between chunks.

    Returns the streamed text and whether `poll` came true before the stream ended.
    """
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "slow and steady"}], stream=True
    )
    text, started, seen = "", False, False
    for chunk in stream:
        if not chunk.choices:
            continue
        piece = chunk.choices[0].delta.content or ""
        text += piece
        if piece and not started:
            started = True
            during()
        elif started and not seen:
            seen = poll()
    return text, seen


def test_sighup_adds_a_model_while_a_stream_in_flight_completes(
    slow: Sim, start_gateway: Any
) -> None:
    slow.reset()
    config = config_for(slow, {"gpt-4o": ["slow/gpt-4o"]})
    gw = start_gateway(config)
    assert models_of(gw) == ["gpt-4o"]

    added = copy.deepcopy(config)
    added["models"]["gpt-4o-mini"] = ["slow/gpt-4o-mini"]

    def reload() -> None:
        rewrite(gw, added)
        gw.send_signal(signal.SIGHUP)

    text, seen = stream_while(gw, "gpt-4o", reload, lambda: "gpt-4o-mini" in models_of(gw))
    assert text == "You said: slow and steady"  # the stream in flight was not cut
    assert seen, "the new model was not served while the stream was still running"
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "new"}]
    )
    assert done.choices[0].message.content == "You said: new"
    assert "configuration reloaded: 2 models" in gw.logs()

    # a reload that removes the model being streamed: that stream still finishes
    removed = copy.deepcopy(added)
    del removed["models"]["gpt-4o"]

    def remove() -> None:
        rewrite(gw, removed)
        gw.send_signal(signal.SIGHUP)

    text, seen = stream_while(gw, "gpt-4o", remove, lambda: models_of(gw) == ["gpt-4o-mini"])
    assert text == "You said: slow and steady" and seen
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


BROKEN = [
    (
        lambda c: {**c, "models": {"gpt-4o": ["nowhere/gpt-4o"]}},
        "models.gpt-4o[0].resource: unknown resource 'nowhere'",
    ),
    (lambda c: {**c, "routing": {"max_attemps": 3}}, "routing.max_attemps: unknown key"),
    (None, "not valid YAML at line 3"),  # an editor's half-written save
]


def test_a_broken_reload_keeps_the_old_config_serving(slow: Sim, start_gateway: Any) -> None:
    slow.reset()
    config = config_for(slow, {"gpt-4o": ["slow/gpt-4o"], "gpt-4o-mini": ["slow/gpt-4o-mini"]})
    gw = start_gateway(config)
    client = openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0)
    for n, (broken, error) in enumerate(BROKEN, start=1):
        if broken is None:
            gw.config_path.write_text("models:\n  gpt-4o: [slow/gpt-4o\n")
        else:
            rewrite(gw, broken(config))
        gw.send_signal(signal.SIGHUP)
        assert wait_for(lambda n=n: gw.logs().count("reload refused") == n), gw.logs()
        logs = gw.logs()
        assert error in logs
        assert gw.proc.poll() is None
        assert models_of(gw) == ["gpt-4o", "gpt-4o-mini"]
        done = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "still here"}]
        )
        assert done.choices[0].message.content == "You said: still here"
    assert logs.count("ERROR") >= len(BROKEN)
    assert "Traceback" not in logs and "configuration reloaded" not in logs


def test_watch_follows_the_file(slow: Sim, start_gateway: Any) -> None:
    slow.reset()
    config = config_for(slow, {"gpt-4o": ["slow/gpt-4o"]})
    gw = start_gateway(config, "--watch")
    changed = copy.deepcopy(config)
    changed["models"]["o3-mini"] = ["slow/o3-mini"]
    time.sleep(1.1)  # let the file's mtime move on even on a coarse-grained filesystem
    rewrite(gw, changed)
    assert wait_for(lambda: models_of(gw) == ["gpt-4o", "o3-mini"]), gw.logs()

    gw.config_path.write_text("resources: [")  # a broken save is refused, the old config stays
    assert wait_for(lambda: "reload refused" in gw.logs()), gw.logs()
    assert models_of(gw) == ["gpt-4o", "o3-mini"]
