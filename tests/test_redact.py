"""app/redact.py: configured Azure key values are replaced wherever they appear."""

from __future__ import annotations

from app.redact import MARK, Redactor

KEY = "0123456789abcdef0123456789abcdef"


def test_every_occurrence_of_every_key_is_replaced() -> None:
    r = Redactor([KEY, "second-key-value", KEY])
    body = f'{{"error": {{"message": "api-key: {KEY}; again {KEY}; second-key-value"}}}}'
    out = r.bytes(body.encode()).decode()
    assert KEY not in out and "second-key-value" not in out
    assert out.count(MARK) == 3
    assert r.text(body) == out


def test_a_key_containing_another_is_replaced_whole() -> None:
    r = Redactor(["abcdefgh", "abcdefgh-longer"])
    assert r.bytes(b"x abcdefgh-longer y abcdefgh") == b"x [redacted] y [redacted]"


def test_text_without_a_key_is_returned_as_is() -> None:
    data = b'data: {"choices": []}\n\n'
    assert Redactor([KEY]).bytes(data) is data


def test_short_values_are_not_searched_for() -> None:
    r = Redactor(["k", "short", ""])
    assert r.bytes(b"a key, short") == b"a key, short"


def test_current_secrets_are_asked_for_at_each_use() -> None:
    tokens: list[str] = ["token-one-value"]
    r = Redactor([KEY], lambda: tuple(tokens))
    assert r.bytes(b"a token-one-value b") == b"a [redacted] b"
    tokens[:] = ["token-two-value", "token-one-value"]  # refreshed: the old one still covered
    assert r.text("token-two-value token-one-value") == f"{MARK} {MARK}"
