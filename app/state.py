"""Shared mutable state behind one interface: cooldowns, rejected keys, limits,
and where each stored response lives (`app.affinity`).

The hot path reads cooldowns and rejected keys synchronously (a dict lookup);
writes and limit checks may go to a shared backend. `MemoryState` keeps it in
this process; `app.redis_state.RedisState` shares it across replicas.
Times are wall-clock seconds (`time.time()`), so replicas agree on them.

`tpm` is a cap under concurrency too (issue 10: 30 parallel streams on
`tpm: 50` were all admitted): `admit` reserves a request's estimated tokens
in the window at once, and `settle` replaces the estimate with what the
request used once it is known, so requests in flight count before their
usage arrives and the window overshoots by at most one request's estimate.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from app.affinity import Owner, OwnerCache, SQLiteAffinity

WINDOW = 60.0  # seconds: rpm and tpm are counted over the last minute


class State(Protocol):
    """What the gateway needs from its state, wherever it is kept."""

    backend: str

    def cooling_until(self, target_id: str) -> float: ...
    def cool(self, target_id: str, until: float) -> None: ...
    def cooling(self, now: float) -> dict[str, float]: ...
    def key_rejected(self, key_id: str, now: float) -> bool: ...
    def reject_key(self, key_id: str, until: float) -> None: ...
    def rejected_keys(self, now: float) -> dict[str, float]: ...
    async def admit(
        self, name: str, rpm: int | None, tpm: int | None, now: float, reserve: int = 0
    ) -> float | None:
        """Count one request of `name` and reserve `reserve` tokens for it; if over
        a limit, count nothing and say how many seconds until it would fit."""
        ...

    async def settle(self, name: str, at: float, reserved: int, used: int, now: float) -> None:
        """The request admitted at `at` with `reserved` tokens used `used`."""
        ...

    async def add_tokens(self, name: str, tokens: int, now: float) -> None: ...
    def remember(self, response_id: str, owner: Owner, now: float) -> None:
        """Note where a stored response lives; never waits on a store."""
        ...

    async def owner(self, response_id: str, now: float) -> Owner | None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class _Window:
    """Events of the last minute, with a running total (exact sliding window)."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def trim(self, now: float) -> None:
        events = self.events
        while events and events[0][0] <= now - WINDOW:
            self.total -= events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount

    def wait(self, now: float) -> float:
        return self.events[0][0] + WINDOW - now if self.events else 0.0

    def settle(self, at: float, reserved: int, used: int, now: float) -> None:
        """Turn the reservation made at `at` into `used`; if it has left the
        window already, count `used` now."""
        events = self.events
        for i in range(len(events) - 1 if reserved > 0 else -1, -1, -1):
            t, amount = events[i]
            if t < at:
                break
            if t == at and amount >= reserved:
                events[i] = (t, amount - reserved + used)
                self.total += used - reserved
                return
        if used > 0:
            self.add(now, used)


class MemoryState:
    """This process's state; stored responses' owners also go to `affinity`
    (SQLite) when given, so they survive a restart and reach other workers."""

    backend = "memory"

    def __init__(self, affinity: SQLiteAffinity | None = None, ttl: float = 30 * 86400.0) -> None:
        self.affinity = affinity
        self.ttl = ttl
        self.owners = OwnerCache()
        self._cooling: dict[str, float] = {}
        self._rejected: dict[str, float] = {}
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}

    # deployments -------------------------------------------------------------
    def cooling_until(self, target_id: str) -> float:
        return self._cooling.get(target_id, 0.0)

    def cool(self, target_id: str, until: float) -> None:
        if until > self._cooling.get(target_id, 0.0):
            self._cooling[target_id] = until

    def cooling(self, now: float) -> dict[str, float]:
        return {t: u for t, u in self._cooling.items() if u > now}

    # keys --------------------------------------------------------------------
    def key_rejected(self, key_id: str, now: float) -> bool:
        return self._rejected.get(key_id, 0.0) > now

    def rejected_until(self, key_id: str) -> float:
        return self._rejected.get(key_id, 0.0)

    def reject_key(self, key_id: str, until: float) -> None:
        self._rejected[key_id] = until

    def rejected_keys(self, now: float) -> dict[str, float]:
        return {k: u for k, u in self._rejected.items() if u > now}

    def forget_key(self, key_id: str) -> None:
        self._rejected.pop(key_id, None)

    # limits ------------------------------------------------------------------
    async def admit(
        self, name: str, rpm: int | None, tpm: int | None, now: float, reserve: int = 0
    ) -> float | None:
        return self.admit_now(name, rpm, tpm, now, reserve)

    def admit_now(
        self, name: str, rpm: int | None, tpm: int | None, now: float, reserve: int = 0
    ) -> float | None:
        requests = self._requests.get(name)
        if requests is None:
            requests = self._requests[name] = _Window()
        requests.trim(now)
        if rpm is not None and requests.total >= rpm:
            return requests.wait(now)
        if tpm is not None:
            tokens = self._tokens.get(name)
            if tokens is not None:
                tokens.trim(now)
                if tokens.total >= tpm:
                    return tokens.wait(now)
        requests.add(now, 1)
        if reserve > 0:
            self._token_window(name, now).add(now, reserve)
        return None

    def _token_window(self, name: str, now: float) -> _Window:
        window = self._tokens.get(name)
        if window is None:
            window = self._tokens[name] = _Window()
        window.trim(now)
        return window

    async def settle(self, name: str, at: float, reserved: int, used: int, now: float) -> None:
        self.settle_now(name, at, reserved, used, now)

    def settle_now(self, name: str, at: float, reserved: int, used: int, now: float) -> None:
        if reserved > 0 or used > 0:
            self._token_window(name, now).settle(at, max(reserved, 0), max(used, 0), now)

    async def add_tokens(self, name: str, tokens: int, now: float) -> None:
        self.add_tokens_now(name, tokens, now)

    def add_tokens_now(self, name: str, tokens: int, now: float) -> None:
        if tokens > 0:
            self._token_window(name, now).add(now, tokens)

    # stored responses --------------------------------------------------------
    def remember(self, response_id: str, owner: Owner, now: float) -> None:
        if self.affinity is not None:
            self.affinity.remember(response_id, owner, now)
        else:
            self.owners.put(response_id, owner, now + self.ttl)

    async def owner(self, response_id: str, now: float) -> Owner | None:
        if self.affinity is not None:
            return await self.affinity.owner(response_id, now)
        return self.owners.get(response_id, now)

    async def start(self) -> None:
        if self.affinity is not None:
            await self.affinity.start()

    async def close(self) -> None:
        if self.affinity is not None:
            await self.affinity.close()
