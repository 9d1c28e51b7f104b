"""app/routing.py: the routing table and list-order / priority / cooldown behaviour.

(Weighted draws within a priority are the resilience tests' subject.)
"""

from __future__ import annotations

import random

import pytest

from app.config import parse
from app.routing import Target, UpstreamKey, allowed_models, build_table, key_id, order

CONFIG = """
resources:
  eastus:
    endpoint: https://contoso-eastus.openai.azure.com/openai/v1
    keys: [east-VALUE-one, east-VALUE-two]
  sweden:
    endpoint: https://contoso-sweden.services.ai.azure.com/
    keys: [swe-VALUE-one]
    api: legacy
models:
  gpt-4o:
    - {resource: sweden, deployment: gpt4o-prod}
    - eastus/gpt-4o
  reasoner:
    - eastus/o3-mini
    - {resource: eastus, deployment: my-deployment}
    - {resource: eastus, deployment: o4-mini, reasoning: false}
  gpt-5:
    - eastus/prod-1
  gpt-5-chat:
    - eastus/gpt-5-chat
"""
SECRETS = ("east-VALUE-one", "east-VALUE-two", "swe-VALUE-one")


@pytest.fixture
def table() -> dict[str, tuple[Target, ...]]:
    return build_table(parse(CONFIG, {}))


def test_table_urls_forms_and_order(table: dict[str, tuple[Target, ...]]) -> None:
    assert list(table) == ["gpt-4o", "reasoner", "gpt-5", "gpt-5-chat"]
    sweden, eastus = table["gpt-4o"]
    assert (sweden.model, sweden.resource, sweden.deployment) == ("gpt-4o", "sweden", "gpt4o-prod")
    assert sweden.api == "legacy" and sweden.api_version == "2024-10-21"
    assert sweden.url == (
        "https://contoso-sweden.services.ai.azure.com/openai/deployments/gpt4o-prod/"
        "chat/completions?api-version=2024-10-21"
    )
    assert eastus.api == "v1" and eastus.api_version is None
    assert eastus.url == "https://contoso-eastus.openai.azure.com/openai/v1/chat/completions"
    assert eastus.id == "eastus/gpt-4o"


def test_keys_keep_their_order_and_ids_are_hashes(table: dict[str, tuple[Target, ...]]) -> None:
    _, eastus = table["gpt-4o"]
    assert [k.value for k in eastus.keys] == ["east-VALUE-one", "east-VALUE-two"]
    ids = [k.id for k in eastus.keys]
    assert ids[0] != ids[1]
    assert all(i.startswith("eastus#") and len(i) == len("eastus#") + 12 for i in ids)
    assert ids[0] == key_id("eastus", "east-VALUE-one")
    # the same key value on another resource gets another id
    assert key_id("sweden", "east-VALUE-one") != ids[0]
    for targets in table.values():
        for t in targets:
            for k in t.keys:
                assert not any(s in k.id for s in SECRETS)
                assert not any(s in repr(k) for s in SECRETS)
            assert not any(s in repr(t) for s in SECRETS)
            assert not any(s in t.url for s in SECRETS)


def test_key_repr_hides_the_value() -> None:
    key = UpstreamKey("r#abc", "super-secret")
    assert "super-secret" not in repr(key)
    assert "super-secret" not in str(key)


def test_reasoning_detection(table: dict[str, tuple[Target, ...]]) -> None:
    o3, named_by_model, overridden = table["reasoner"]
    assert o3.reasoning  # from the deployment name
    assert not named_by_model.reasoning  # neither name says so
    assert not overridden.reasoning  # explicit override wins over the name
    (gpt5,) = table["gpt-5"]
    assert gpt5.reasoning  # from the public model name
    (chat,) = table["gpt-5-chat"]
    assert not chat.reasoning
    forced = build_table(
        parse(CONFIG + "  forced: [{resource: eastus, deployment: x, reasoning: true}]\n", {})
    )
    assert forced["forced"][0].reasoning


def test_defaults_priority_and_weight(table: dict[str, tuple[Target, ...]]) -> None:
    for targets in table.values():
        for t in targets:
            assert (t.priority, t.weight, t.weighted) == (0, 1.0, False)


def never_cooling(_: str) -> float:
    return 0.0


def test_order_without_priorities_is_list_order(table: dict[str, tuple[Target, ...]]) -> None:
    targets = table["reasoner"]
    for seed in range(20):
        ordered, recovers = order(targets, never_cooling, 1000.0, random.Random(seed))
        assert ordered == list(targets)
        assert recovers is None


def test_priority_orders_before_list_order() -> None:
    config = parse(
        """
resources:
  a: {endpoint: "https://a", keys: [k]}
models:
  m:
    - {resource: a, deployment: last, priority: 2}
    - {resource: a, deployment: first-1}
    - {resource: a, deployment: mid, priority: 1}
    - {resource: a, deployment: first-2}
    - {resource: a, deployment: early, priority: -1}
""",
        {},
    )
    targets = build_table(config)["m"]
    ordered, _ = order(targets, never_cooling, 0.0, random.Random(1))
    assert [t.deployment for t in ordered] == ["early", "first-1", "first-2", "mid", "last"]


def test_cooling_targets_are_skipped_and_earliest_recovery_returned(
    table: dict[str, tuple[Target, ...]],
) -> None:
    targets = table["reasoner"]
    now = 1000.0
    until = {targets[0].id: now + 30, targets[2].id: now + 5}
    ordered, recovers = order(targets, lambda tid: until.get(tid, 0.0), now)
    assert ordered == [targets[1]]
    assert recovers == now + 5


def test_a_cooldown_that_has_passed_is_not_cooling(table: dict[str, tuple[Target, ...]]) -> None:
    targets = table["gpt-4o"]
    now = 1000.0
    ordered, recovers = order(targets, lambda tid: now, now)  # ends exactly now
    assert ordered == list(targets)
    assert recovers is None


def test_everything_cooling(table: dict[str, tuple[Target, ...]]) -> None:
    targets = table["gpt-4o"]
    ordered, recovers = order(targets, lambda tid: 2000.0 if "sweden" in tid else 1500.0, 1000.0)
    assert ordered == []
    assert recovers == 1500.0


def test_allowed_models_keeps_table_order(table: dict[str, tuple[Target, ...]]) -> None:
    assert allowed_models(table, lambda m: m.startswith("gpt")) == [
        "gpt-4o",
        "gpt-5",
        "gpt-5-chat",
    ]
    assert allowed_models(table, lambda m: False) == []
