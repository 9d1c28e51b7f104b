"""Public model name -> the deployments that may serve it, in the order to try.

`build_table` turns the validated config into frozen `Target`s with their URL
precomputed, so the hot path does no string work. `order` is the pure routing
decision: lowest priority first, weighted random within a priority, and
deployments still cooling down left out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from app import azure
from app.config import DEFAULT_RESPONSES_API_VERSION, Config
from app.operations import OPERATIONS, Place
from app.upstream_auth import EntraKey, Key, UpstreamKey, key_id, resource_keys

__all__ = ["Target", "UpstreamKey", "allowed_models", "build_table", "key_id", "order"]


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    resource: str
    deployment: str
    api: str
    api_version: str | None
    urls: Mapping[str, str]  # operation name -> its URL on this deployment
    place: Place  # what URLs are built from (stored responses' URLs too)
    keys: tuple[Key, ...]  # api keys in rotation order, or the resource's Entra identity
    priority: int = 0
    weight: float = 1.0
    weighted: bool = False  # an explicit weight: draw at random within the priority
    reasoning: bool = False

    id: str = field(init=False, repr=False)  # "resource/deployment": cooldowns are kept by it

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.resource}/{self.deployment}")

    @property
    def url(self) -> str:
        """The chat-completions URL: what `check --probe` and the status page show."""
        return self.urls["chat"]


def build_table(
    config: Config, entra: Mapping[str, EntraKey] | None = None
) -> dict[str, tuple[Target, ...]]:
    """`entra`: the resources' Entra keys bound to running token sources (the server's);
    without it an `auth: entra` resource gets an unbound key, with no token."""
    table: dict[str, tuple[Target, ...]] = {}
    keys_of: dict[str, tuple[Key, ...]] = {}
    for model, entries in config.models.items():
        targets = []
        for dep in entries:
            res = config.resources[dep.resource]
            api = dep.api or res.api
            version = dep.api_version or res.api_version
            if api == "legacy" and not version:
                version = azure.LEGACY_API_VERSION
            keys = keys_of.get(dep.resource)
            if keys is None:
                keys = keys_of[dep.resource] = resource_keys(dep.resource, res, entra)
            reasoning = dep.reasoning
            if reasoning is None:
                reasoning = azure.is_reasoning(dep.deployment) or azure.is_reasoning(model)
            place = Place(
                base=azure.normalize_endpoint(res.endpoint),
                api=api,
                deployment=dep.deployment,
                api_version=version or azure.LEGACY_API_VERSION,
                responses_api_version=res.responses_api_version or DEFAULT_RESPONSES_API_VERSION,
            )
            targets.append(
                Target(
                    model=model,
                    resource=dep.resource,
                    deployment=dep.deployment,
                    api=api,
                    api_version=version if api == "legacy" else None,
                    urls={op.name: op.url(place) for op in OPERATIONS},
                    keys=keys,
                    priority=dep.priority,
                    weight=dep.weight or 1.0,
                    weighted=dep.weight is not None,
                    reasoning=reasoning,
                    place=place,
                )
            )
        table[model] = tuple(targets)
    return table


def order(
    targets: Sequence[Target],
    cooling_until: Callable[[str], float],
    now: float,
    rng: random.Random | None = None,
) -> tuple[list[Target], float | None]:
    """Targets to try, best first, and when the first cooling one recovers.

    Within a priority where some target has an explicit `weight`, targets are
    drawn without replacement with probability proportional to their weight
    (Efraimidis-Spirakis keys); elsewhere list order is preference order.
    """
    if len(targets) == 1:  # the common case, without the sort
        until = cooling_until(targets[0].id)
        return ([targets[0]], None) if until <= now else ([], until)
    ready: list[tuple[int, float, int, Target]] = []
    recovers: float | None = None
    draw = (rng or random).random
    weighted = {t.priority for t in targets if t.weighted}
    for index, target in enumerate(targets):
        until = cooling_until(target.id)
        if until > now:
            recovers = until if recovers is None else min(recovers, until)
            continue
        rank = -(draw() ** (1.0 / target.weight)) if target.priority in weighted else 0.0
        ready.append((target.priority, rank, index, target))
    ready.sort(key=lambda item: item[:3])
    return [item[3] for item in ready], recovers


def allowed_models(
    table: dict[str, tuple[Target, ...]], allows: Callable[[str], bool]
) -> list[str]:
    return [m for m in table if allows(m)]
