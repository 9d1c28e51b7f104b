"""What an answer cost: the price table, which price applies, and the arithmetic.

Prices are USD per 1M tokens, from `pricing:` in the configuration and from the
built-in table (`app/prices.yaml`, with its date and source). Costs are whole
nano-dollars (1e-9 USD): they add up exactly in SQLite and in Redis (HINCRBY), and
the cheapest token listed (gpt-5-nano from the cache, $0.005 per 1M) is 5 n$.

Which price applies to an answer (`Prices.price_for`), first match wins:

    1. `pricing:` for the deployment that answered ("resource/deployment"):
       provisioned (PTU) deployments are paid by the hour, priced 0 here
    2. the model Azure says answered (the answer's `model` field; a model-router
       deployment reports the model it chose): `pricing:`, then the built-in table
    3. the public model the caller asked for: likewise
    none: the answer is *unpriced* - its cost is None, never a silent 0

A name is looked up as given, then without its version suffix
(`gpt-4o-2024-11-20` -> `gpt-4o`, `gpt-4-0613` -> `gpt-4`).

`Prices` is built once per configuration; `cost()` runs at bookkeeping time, after
the answer: a dict lookup (cached per deployment x answer model x public model)
and three multiplications.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from app.config import Config

NANO = 1_000_000_000  # nano-dollars per dollar

# price field -> how many units its price is for. The token fields are per 1M tokens;
# images are priced each, audio per minute (counted in seconds), characters per 1M.
UNITS: Mapping[str, int] = {
    "input": 1_000_000,
    "cached_input": 1_000_000,
    "output": 1_000_000,
    "image": 1,
    "audio_minute": 60,
    "characters": 1_000_000,
}

# usage counter -> the price field it is billed at (images and audio)
MEDIA_COUNTERS = (
    ("images", "image"),
    ("audio_seconds", "audio_minute"),
    ("characters", "characters"),
)

_VERSION = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens; `cached_input` None: cached prompt tokens cost `input`.
    Images and audio: USD per image, per minute of audio, per 1M characters spoken."""

    input: float
    output: float
    cached_input: float | None = None
    image: float = 0.0
    audio_minute: float = 0.0
    characters: float = 0.0
    # nano-dollars per unit, per price field: worked out once
    rates: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cached = self.input if self.cached_input is None else self.cached_input
        usd = {
            "input": self.input,
            "cached_input": cached,
            "output": self.output,
            "image": self.image,
            "audio_minute": self.audio_minute,
            "characters": self.characters,
        }
        rates = tuple((name, usd[name] * NANO / UNITS[name]) for name in UNITS)
        object.__setattr__(self, "rates", rates)

    def cost(self, counts: Mapping[str, int]) -> int:
        """Nano-dollars for one answer's usage counts."""
        units = billable_units(counts)
        return round(sum(units.get(name, 0) * rate for name, rate in self.rates))


def billable_units(counts: Mapping[str, int]) -> dict[str, int]:
    """Usage counts -> units per price field.

    Chat and embeddings report `prompt_tokens` (cached ones included, as
    `cached_tokens`) and `completion_tokens`; Responses reports `input_tokens` and
    `output_tokens`. Reasoning tokens are part of the completion/output count and
    billed as output; they are only used on their own when no output count came.
    Images and audio add `images`, `audio_seconds` and `characters` (app.media_usage).
    """
    prompt = counts.get("prompt_tokens")
    if prompt is None:
        prompt = counts.get("input_tokens", 0)
    cached = min(counts.get("cached_tokens", 0), prompt)
    output = counts.get("completion_tokens")
    if output is None:
        output = counts.get("output_tokens")
    if output is None:
        output = counts.get("reasoning_tokens", 0)
    units = {"input": prompt - cached, "cached_input": cached, "output": output}
    for counter, unit in MEDIA_COUNTERS:
        n = counts.get(counter)
        if n:
            units[unit] = n
    return units


def undated(name: str) -> str:
    """`gpt-4o-2024-11-20` -> `gpt-4o`; other names unchanged."""
    return _VERSION.sub("", name)


def parse_table(data: Mapping[str, Any]) -> dict[str, Price]:
    """`{name: {input, output[, cached_input, image, audio_minute, characters]}}` -> prices
    (already validated shapes; an entry priced only per image/minute/character may omit
    the token prices)."""
    return {
        str(name): Price(
            input=float(p.get("input", 0)),
            output=float(p.get("output", 0)),
            cached_input=None if p.get("cached_input") is None else float(p["cached_input"]),
            image=float(p.get("image", 0)),
            audio_minute=float(p.get("audio_minute", 0)),
            characters=float(p.get("characters", 0)),
        )
        for name, p in data.items()
    }


@dataclass(frozen=True)
class Table:
    """The built-in table and the date it was compiled."""

    as_of: str
    prices: Mapping[str, Price]


@functools.cache
def builtin() -> Table:
    text = resources.files("app").joinpath("prices.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return Table(as_of=str(data["as_of"]), prices=parse_table(data["models"]))


class Prices:
    """The prices of one configuration generation."""

    def __init__(self, configured: Mapping[str, Price], table: Table | None = None) -> None:
        self.table = table if table is not None else builtin()
        self._configured = dict(configured)
        self._found: dict[tuple[str | None, str | None, str], Price | None] = {}

    def named(self, name: str) -> Price | None:
        """A model's price: `pricing:` first, then the built-in table; as given, then undated."""
        for candidate in (name, undated(name)):
            found = self._configured.get(candidate) or self.table.prices.get(candidate)
            if found is not None:
                return found
        return None

    def price_for(
        self, deployment_id: str | None, answer_model: str | None, public_model: str
    ) -> Price | None:
        key = (deployment_id, answer_model, public_model)
        if key in self._found:
            return self._found[key]
        price = self._configured.get(deployment_id) if deployment_id else None
        if price is None and answer_model:
            price = self.named(answer_model)
        if price is None:
            price = self.named(public_model)
        if len(self._found) >= _CACHE_LIMIT:
            self._found.clear()
        self._found[key] = price
        return price

    def cost(
        self,
        deployment_id: str | None,
        answer_model: str | None,
        public_model: str,
        counts: Mapping[str, int],
    ) -> int | None:
        """Nano-dollars, or None when no price applies (unpriced)."""
        price = self.price_for(deployment_id, answer_model, public_model)
        return None if price is None else price.cost(counts)


def configured_prices(config: Config) -> dict[str, Price]:
    """`pricing:` of a configuration as prices."""
    return {
        n: Price(p.input, p.output, p.cached_input, p.image, p.audio_minute, p.characters)
        for n, p in config.pricing.items()
    }


def usd(nano: int) -> float:
    return nano / NANO
