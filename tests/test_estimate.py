"""app/estimate.py: token estimates from a request body."""

from __future__ import annotations

from app.estimate import DATA_URL_TOKENS, max_output, prompt_tokens, reservation


def test_text_counts_four_characters_a_token_plus_framing() -> None:
    one = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 400}]}
    two = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 800}]}
    assert 100 < prompt_tokens(one) < 115
    assert prompt_tokens(two) - prompt_tokens(one) == 100


def test_model_and_other_settings_are_not_prompt() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert prompt_tokens({**base, "model": "m" * 4000, "user": "u" * 4000}) == prompt_tokens(base)


def test_an_inline_image_costs_a_flat_amount_not_its_base64() -> None:
    image = "data:image/png;base64," + "A" * 1_000_000
    part = {"type": "image_url", "image_url": {"url": image}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    assert DATA_URL_TOKENS <= prompt_tokens(body) < DATA_URL_TOKENS + 20


def test_responses_and_embeddings_inputs_count() -> None:
    assert prompt_tokens({"model": "m", "input": "y" * 400}) >= 100
    assert prompt_tokens({"model": "m", "input": ["a" * 200, "b" * 200]}) >= 100


def test_max_output_reads_each_operations_cap() -> None:
    assert max_output({"max_tokens": 50}) == 50
    assert max_output({"max_completion_tokens": 70}) == 70
    assert max_output({"max_output_tokens": 90}) == 90
    assert max_output({"max_tokens": True}) == 0
    assert max_output({}) == 0
    assert max_output([]) == 0


def test_reservation_is_prompt_plus_cap() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 100}
    assert reservation(body) == prompt_tokens(body) + 100


def test_a_deeply_nested_body_needs_no_recursion() -> None:
    node: object = "x" * 8
    for _ in range(100_000):
        node = [node]
    assert prompt_tokens(node) == 2
