"""Shared mutable state behind one interface: cooldowns, rejected keys, limits.

The hot path reads cooldowns and rejected keys synchronously (a dict lookup);
writes and limit checks may go to a shared backend. `MemoryState` keeps it in
this process; `app.redis_state.RedisState` shares it across replicas.
Times are wall-clock seconds (`time.time()`), so replicas agree on them.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

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
    async def admit(self, name: str, rpm: int | None, tpm: int | None, now: float) -> float | None:
        """Count one request of `name`; if over a limit, count nothing and say
        how many seconds until it would fit."""
        ...

    async def add_tokens(self, name: str, tokens: int, now: float) -> None: ...
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


class MemoryState:
    backend = "memory"

    def __init__(self) -> None:
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
    async def admit(self, name: str, rpm: int | None, tpm: int | None, now: float) -> float | None:
        return self.admit_now(name, rpm, tpm, now)

    def admit_now(self, name: str, rpm: int | None, tpm: int | None, now: float) -> float | None:
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
        return None

    async def add_tokens(self, name: str, tokens: int, now: float) -> None:
        self.add_tokens_now(name, tokens, now)

    def add_tokens_now(self, name: str, tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        window = self._tokens.get(name)
        if window is None:
            window = self._tokens[name] = _Window()
        window.trim(now)
        window.add(now, tokens)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
