"""`Gateway`: one configuration generation, everything a request needs.

Built once per (re)load from a validated `Config`. Long-lived parts - the
upstream client, the state backend, metrics, usage - are handed in by the
server and survive reloads; a request keeps the `Gateway` it started with,
so a reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.accesslog import AccessLog
from app.affinity import Owner
from app.attemptlog import AttemptLog
from app.auth import KeyTable
from app.budget import Budgets
from app.config import Config
from app.disconnect import Watches
from app.failover import Policy
from app.metrics import Metrics
from app.pricing import Prices, configured_prices
from app.recent import Recent
from app.redact import Redactor
from app.routing import Target, build_table
from app.state import State
from app.upstream import Timeouts, Upstream
from app.upstream_auth import Credentials, entra_secrets
from app.usage import Usage


@dataclass(slots=True)
class Services:
    """What outlives a configuration: created at startup, closed at shutdown."""

    upstream: Upstream
    state: State
    metrics: Metrics
    usage: Usage
    budgets: Budgets
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    recent: Recent = field(default_factory=Recent)  # the status page's window
    access_log: AccessLog | None = None
    attempt_log: AttemptLog = field(  # one warning per failed upstream attempt, summarized
        default_factory=lambda: AttemptLog(logging.getLogger("aoai_gateway"))
    )
    watches: Watches = field(default_factory=Watches)  # client-disconnect listening
    credentials: Credentials = field(default_factory=Credentials)  # Entra ID token sources

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping after the response without holding it up."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class Gateway:
    def __init__(self, config: Config, services: Services, rng: random.Random | None = None):
        self.config = config
        self.services = services
        self.keys = KeyTable(config.gateway.keys)
        self.prices = Prices(configured_prices(config))
        services.budgets.configure({k.name: k.budget for k in config.gateway.keys if k.budget})
        self.entra = services.credentials.bind(config)  # resource -> its Entra ID key
        self.table: dict[str, tuple[Target, ...]] = build_table(config, self.entra)
        r = config.routing
        self.policy = Policy(
            max_attempts=r.max_attempts,
            cooldown=r.cooldown,
            rejected_key_ttl=r.rejected_key_ttl,
            timeouts=Timeouts(
                connect=r.connect_timeout,
                read=r.first_byte_timeout,
                max_body=config.gateway.max_upstream_body_bytes,
            ),
        )
        self.max_body = config.gateway.max_body_bytes
        self.redact = Redactor(
            [
                *(k.get_secret_value() for res in config.resources.values() for k in res.keys),
                *entra_secrets(config),
            ],
            services.credentials.secrets if self.entra else None,  # tokens, as they change
        )
        self.rng = rng or random.Random()
        # stored responses' holders: by "resource/deployment", else any on the resource
        self._placed: dict[str, Target] = {}
        self._on_resource: dict[str, Target] = {}
        for targets in self.table.values():
            for t in targets:
                self._placed.setdefault(t.id, t)
                self._on_resource.setdefault(t.resource, t)

    def holder(self, owner: Owner) -> Target | None:
        """Where a stored response's calls go: its deployment, else its resource."""
        found = self._placed.get(f"{owner.resource}/{owner.deployment}")
        return found if found is not None else self._on_resource.get(owner.resource)

    def cooling_view(self, now: float) -> Iterable[tuple[str, str, bool]]:
        """(resource, deployment, cooling) for every deployment in the table."""
        seen: set[str] = set()
        for targets in self.table.values():
            for t in targets:
                if t.id not in seen:
                    seen.add(t.id)
                    yield t.resource, t.deployment, self.services.state.cooling_until(t.id) > now
