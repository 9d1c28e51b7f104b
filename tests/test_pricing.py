"""app.pricing: the cost of an answer per field, the built-in table versus `pricing:` versus
unpriced, and which model is priced when the answer names another one (model routers)."""

from __future__ import annotations

import pytest

from app.config import ConfigError, parse
from app.pricing import NANO, UNITS, Price, Prices, billable_units, builtin, undated

GPT4O = Price(input=2.50, cached_input=1.25, output=10.00)


# --- arithmetic ------------------------------------------------------------------------


def test_each_field_is_priced_at_its_own_rate() -> None:
    one_m = 1_000_000
    assert GPT4O.cost({"prompt_tokens": one_m}) == 2.50 * NANO
    assert GPT4O.cost({"prompt_tokens": one_m, "cached_tokens": one_m}) == 1.25 * NANO
    assert GPT4O.cost({"completion_tokens": one_m}) == 10.00 * NANO
    # 600 fresh + 400 cached prompt tokens, 100 completion tokens
    mixed = {"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 100}
    assert GPT4O.cost(mixed) == round((600 * 2.50 + 400 * 1.25 + 100 * 10.00) * 1000)


def test_reasoning_tokens_are_billed_as_output_once() -> None:
    # Azure counts reasoning inside completion_tokens: they are not added a second time
    counts = {"prompt_tokens": 10, "completion_tokens": 20, "reasoning_tokens": 16}
    o3_mini = Price(input=1.10, cached_input=0.55, output=4.40)
    assert o3_mini.cost(counts) == (10 * 1100 + 20 * 4400)
    # a usage with reasoning but no completion count still bills them as output
    assert billable_units({"prompt_tokens": 1, "reasoning_tokens": 16})["output"] == 16


def test_responses_and_embeddings_usage_fields() -> None:
    # Responses: input_tokens / output_tokens; embeddings: prompt_tokens only
    assert billable_units({"input_tokens": 7, "output_tokens": 3, "cached_tokens": 2}) == {
        "input": 5,
        "cached_input": 2,
        "output": 3,
    }
    small = builtin().prices["text-embedding-3-small"]
    assert small.cost({"prompt_tokens": 1_000_000}) == 0.02 * NANO


def test_without_a_cached_price_cached_tokens_cost_the_input_rate() -> None:
    flat = Price(input=3.0, output=6.0)
    assert flat.cost({"prompt_tokens": 100, "cached_tokens": 100}) == 100 * 3000
    # a cache count larger than the prompt (a broken usage) never bills negative input
    assert billable_units({"prompt_tokens": 5, "cached_tokens": 9}) == {
        "input": 0,
        "cached_input": 5,
        "output": 0,
    }


def test_every_unit_has_a_rate_and_the_token_units_are_per_million() -> None:
    assert {name for name, _ in GPT4O.rates} == set(UNITS)
    assert UNITS["input"] == UNITS["cached_input"] == UNITS["output"] == 1_000_000


# --- which price ---------------------------------------------------------------------------


def test_the_built_in_table_is_dated_and_covers_the_common_models() -> None:
    table = builtin()
    assert table.as_of[:4].isdigit() and len(table.as_of) == 10
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    ):
        price = table.prices[model]
        assert price.input > 0, model
    assert table.prices["gpt-4o"] == GPT4O


def test_version_suffixes_are_dropped_only_after_an_exact_miss() -> None:
    assert undated("gpt-4o-2024-11-20") == "gpt-4o"
    assert undated("gpt-4-0613") == "gpt-4"
    assert undated("gpt-4.1-nano") == "gpt-4.1-nano"
    prices = Prices({})
    assert prices.named("gpt-4o-2024-11-20") == GPT4O
    # an older snapshot with its own list price is found as itself first
    assert prices.named("gpt-4o-2024-05-13") == Price(input=5.0, output=15.0)


def test_configured_prices_override_the_table_and_price_unknown_models() -> None:
    mine = Price(input=1.0, output=2.0)
    prices = Prices({"gpt-4o": mine, "house-model": Price(input=0.5, output=0.5)})
    assert prices.named("gpt-4o") is mine
    assert prices.named("gpt-4o-2024-11-20") is mine  # overrides apply to dated names too
    assert prices.named("house-model") is not None
    assert prices.named("gpt-4o-mini") == builtin().prices["gpt-4o-mini"]


def test_a_model_without_a_price_is_unpriced_never_zero() -> None:
    prices = Prices({})
    assert prices.cost(None, "my-finetune-2025-01-01", "my-finetune", {"prompt_tokens": 10}) is None
    assert prices.cost(None, None, "chat-fast", {"prompt_tokens": 10}) is None


def test_a_deployment_price_wins_over_every_model_price() -> None:
    ptu = Price(input=0, output=0)
    prices = Prices({"eastus/o3-ptu": ptu, "o3": Price(input=9, output=9)})
    counts = {"prompt_tokens": 1000, "completion_tokens": 1000}
    assert prices.cost("eastus/o3-ptu", "o3-2025-04-16", "o3", counts) == 0
    assert prices.cost("sweden/o3", "o3-2025-04-16", "o3", counts) == 18 * 1000 * 1000


def test_the_model_that_answered_is_priced_not_the_deployment_or_public_name() -> None:
    # a model-router deployment, public name "auto": Azure answers with the model it chose
    prices = Prices({})
    counts = {"prompt_tokens": 1000, "completion_tokens": 100}
    nano = prices.cost("eastus/model-router", "gpt-4.1-nano-2025-04-14", "auto", counts)
    assert nano == (1000 * 100 + 100 * 400)  # gpt-4.1-nano: $0.10 / $0.40
    # the answer names a priced model different from the public one: the answer wins
    assert prices.cost(None, "gpt-4o-mini-2024-07-18", "gpt-4o", counts) == (1000 * 150 + 100 * 600)
    # the answer names a model with no price: the public model's price applies
    assert prices.cost(None, "mystery-2030-01-01", "gpt-4o", counts) == GPT4O.cost(counts)


def test_the_lookup_is_cached_per_deployment_answer_and_public_model() -> None:
    prices = Prices({})
    first = prices.price_for("eastus/gpt-4o", "gpt-4o-2024-11-20", "gpt-4o")
    assert prices.price_for("eastus/gpt-4o", "gpt-4o-2024-11-20", "gpt-4o") is first
    assert len(prices._found) == 1


# --- configuration -------------------------------------------------------------------------


def test_pricing_config_is_validated_with_places() -> None:
    base = (
        "resources:\n  eastus: {endpoint: 'https://x.openai.azure.com', keys: [k]}\n"
        "models:\n  o3: [eastus/o3-ptu]\n"
    )
    config = parse(
        base + "pricing:\n  gpt-4o: {input: 2.5, cached_input: 1.25, output: 10}\n"
        "  eastus/o3-ptu: {input: 0, output: 0}\n",
        {},
    )
    assert config.pricing["eastus/o3-ptu"].output == 0
    assert config.pricing["gpt-4o"].cached_input == 1.25
    with pytest.raises(ConfigError) as bad:
        parse(
            base + "pricing:\n  gpt-4o: {input: -1, output: 1, cache: 2}\n  o3: {input: 1}\n",
            {},
        )
    text = "\n".join(bad.value.errors)
    assert "pricing.gpt-4o.input" in text
    assert "pricing.gpt-4o.cache" in text
    assert "pricing.o3.output" in text
    with pytest.raises(ConfigError) as unknown:
        parse(base + "pricing:\n  westus/o3: {input: 1, output: 1}\n", {})
    assert unknown.value.errors == ["pricing.westus/o3: unknown resource 'westus'"]


# --- images and audio ------------------------------------------------------------------------


def test_images_audio_and_characters_are_priced_in_their_own_units() -> None:
    assert billable_units({"images": 2, "audio_seconds": 90, "characters": 1000}) == {
        "input": 0,
        "cached_input": 0,
        "output": 0,
        "image": 2,
        "audio_minute": 90,
        "characters": 1000,
    }
    table = builtin().prices
    assert table["dall-e-3"].cost({"images": 2}) == round(2 * 0.04 * NANO)
    assert table["whisper"].cost({"audio_seconds": 90}) == round(1.5 * 0.006 * NANO)
    assert table["tts"].cost({"characters": 1000}) == round(1000 * 15.0 / 1_000_000 * NANO)
    gpt_image = table["gpt-image-1"].cost(
        {"prompt_tokens": 10, "completion_tokens": 272, "images": 1}
    )
    assert gpt_image == round((10 * 5.0 + 272 * 40.0) / 1_000_000 * NANO)


def test_a_unit_only_price_needs_no_token_prices() -> None:
    base = (
        "resources:\n  eastus: {endpoint: 'https://x.openai.azure.com', keys: [k]}\n"
        "models:\n  whisper: [eastus/whisper]\n"
    )
    config = parse(
        base + "pricing:\n  whisper: {audio_minute: 0.01}\n  dall-e-3: {image: 0.08}\n", {}
    )
    assert config.pricing["whisper"].audio_minute == 0.01
    assert config.pricing["whisper"].input == 0
    with pytest.raises(ConfigError) as bad:
        parse(base + "pricing:\n  whisper: {audio_minute: -1}\n", {})
    assert "pricing.whisper.audio_minute" in "\n".join(bad.value.errors)
