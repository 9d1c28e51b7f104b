"""`routing.order`: priority first, weighted random within a priority, cooling skipped."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from app.operations import Place
from app.routing import Target, order


def target(name: str, priority: int = 0, weight: float | None = None) -> Target:
    return Target(
        model="m",
        resource=name,
        deployment="d",
        api="v1",
        api_version=None,
        urls={"chat": f"https://{name}.example.com/openai/v1/chat/completions"},
        place=Place(f"https://{name}", "v1", "d", "2024-10-21", "2025-04-01-preview"),
        keys=(),
        priority=priority,
        weight=weight or 1.0,
        weighted=weight is not None,
    )


def never_cooling(target_id: str) -> float:
    return 0.0


def names(targets: list[Target]) -> list[str]:
    return [t.resource for t in targets]


def test_without_priorities_or_weights_list_order_is_preference_order() -> None:
    targets = [target("c"), target("a"), target("b")]
    rng = random.Random(1)
    for _ in range(50):
        ordered, recovers = order(targets, never_cooling, 100.0, rng)
        assert names(ordered) == ["c", "a", "b"]
        assert recovers is None


def test_lower_priority_first_whatever_the_list_order_or_weight() -> None:
    targets = [
        target("spill", priority=1, weight=1000),
        target("ptu", priority=0, weight=1),
        target("paygo", priority=0, weight=1),
        target("last", priority=2),
    ]
    rng = random.Random(2)
    for _ in range(200):
        ordered, _ = order(targets, never_cooling, 100.0, rng)
        assert set(names(ordered[:2])) == {"ptu", "paygo"}
        assert names(ordered[2:]) == ["spill", "last"]


def test_cooling_targets_are_skipped_and_the_first_recovery_reported() -> None:
    targets = [target("a"), target("b", priority=1), target("c", priority=1)]
    until = {"a/d": 130.0, "c/d": 115.0}
    ordered, recovers = order(targets, lambda t: until.get(t, 0.0), 100.0)
    assert names(ordered) == ["b"]  # priority 1 is used only because priority 0 is out
    assert recovers == 115.0
    # cooled until a moment already past: back in the list
    ordered, recovers = order(targets, lambda t: until.get(t, 0.0), 140.0)
    assert names(ordered) == ["a", "b", "c"]
    assert recovers is None


def test_everything_cooling_leaves_no_candidate_and_says_when() -> None:
    targets = [target("a"), target("b")]
    ordered, recovers = order(targets, lambda t: 150.0 if t == "a/d" else 120.0, 100.0)
    assert ordered == []
    assert recovers == 120.0


@pytest.mark.parametrize(
    "weights",
    [(3.0, 1.0), (1.0, 2.0, 7.0), (0.5, 0.5, 1.0, 2.0)],
    ids=["3:1", "1:2:7", "fractional"],
)
def test_first_choice_share_follows_the_weights(weights: tuple[float, ...]) -> None:
    targets = [target(f"t{i}", weight=w) for i, w in enumerate(weights)]
    rng = random.Random(1234)
    draws = 20000
    first = Counter(order(targets, never_cooling, 0.0, rng)[0][0].resource for _ in range(draws))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert first[f"t{i}"] / draws == pytest.approx(w / total, abs=0.012)


def test_whole_order_is_drawn_without_replacement_by_weight() -> None:
    # P(order) = w1/W * w2/(W-w1) * ...: the fallback after the first choice is weighted too
    weights = {"a": 1.0, "b": 2.0, "c": 7.0}
    targets = [target(n, weight=w) for n, w in weights.items()]
    rng = random.Random(99)
    draws = 30000
    seen = Counter(tuple(names(order(targets, never_cooling, 0.0, rng)[0])) for _ in range(draws))
    for perm in itertools.permutations(weights):
        left = sum(weights.values())
        p = 1.0
        for name in perm:
            p *= weights[name] / left
            left -= weights[name]
        assert seen[perm] / draws == pytest.approx(p, abs=0.012), perm


def test_an_unweighted_target_beside_weighted_ones_counts_as_weight_1() -> None:
    targets = [target("plain"), target("heavy", weight=3)]
    rng = random.Random(7)
    draws = 20000
    first = Counter(order(targets, never_cooling, 0.0, rng)[0][0].resource for _ in range(draws))
    assert first["plain"] / draws == pytest.approx(0.25, abs=0.012)


def test_weights_in_one_priority_leave_list_order_in_another() -> None:
    targets = [target("w1", weight=1), target("w2", weight=1), target("x", 1), target("y", 1)]
    rng = random.Random(5)
    firsts = Counter()
    for _ in range(400):
        ordered, _ = order(targets, never_cooling, 0.0, rng)
        assert names(ordered[2:]) == ["x", "y"]
        firsts[ordered[0].resource] += 1
    assert set(firsts) == {"w1", "w2"}  # priority 0 really is drawn at random


def test_same_seed_same_order() -> None:
    targets = [target(n, weight=w) for n, w in (("a", 1), ("b", 2), ("c", 3))]
    one = [names(order(targets, never_cooling, 0.0, random.Random(3))[0]) for _ in range(5)]
    assert all(o == one[0] for o in one)
