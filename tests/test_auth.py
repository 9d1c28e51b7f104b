"""app/auth.py: gateway key -> caller."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from app.auth import ANONYMOUS, Caller, KeyTable, basic_password, bearer_token
from app.config import parse
from app.errors import Unauthorized

ALICE = "alice-gateway-key-0001"
BOT = "bot-gateway-key-0002"
HASHED = "hashed-gateway-key-0003"


def table() -> KeyTable:
    digest = hashlib.sha256(HASHED.encode()).hexdigest()
    config = parse(
        f"""
gateway:
  keys:
    - {{name: alice, key: {ALICE}}}
    - {{name: ci-bot, key: {BOT}, models: [gpt-4o-mini, "o*-mini"], rpm: 5, tpm: 100}}
    - {{name: hashed, key_sha256: "{digest}", admin: true}}
""",
        {},
    )
    return KeyTable(config.gateway.keys)


def test_bearer_is_accepted() -> None:
    caller = table().authenticate(bearer_token(f"Bearer {ALICE}"), None)
    assert caller.name == "alice"
    assert caller.models is None and not caller.admin


def test_api_key_is_accepted() -> None:
    caller = table().authenticate(None, BOT)
    assert caller == Caller(name="ci-bot", models=("gpt-4o-mini", "o*-mini"), rpm=5, tpm=100)


def test_both_together() -> None:
    keys = table()
    assert keys.authenticate(ALICE, ALICE).name == "alice"
    # one of the two is the gateway key, the other something else (e.g. an SDK default)
    assert keys.authenticate("not-a-key", BOT).name == "ci-bot"
    assert keys.authenticate(BOT, "not-a-key").name == "ci-bot"


def test_key_sha256_matches_the_right_key() -> None:
    keys = table()
    caller = keys.authenticate(HASHED, None)
    assert caller.name == "hashed" and caller.admin
    # the digest itself is not a key
    with pytest.raises(Unauthorized):
        keys.authenticate(hashlib.sha256(HASHED.encode()).hexdigest(), None)


def test_uppercase_key_sha256() -> None:
    digest = hashlib.sha256(b"k").hexdigest().upper()
    config = parse(f'gateway:\n  keys:\n    - {{name: up, key_sha256: "{digest}"}}\n', {})
    assert KeyTable(config.gateway.keys).authenticate("k", None).name == "up"


@pytest.mark.parametrize(
    ("bearer", "api_key"),
    [("wrong", None), (None, "wrong"), ("wrong", "also-wrong"), (ALICE + "x", None)],
)
def test_unknown_key_is_401_invalid_api_key(bearer: str | None, api_key: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        table().authenticate(bearer, api_key)
    err = info.value
    assert err.status == 401
    body = orjson.loads(err.body())
    assert body == {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert "wrong" not in err.message


def test_missing_key_is_401() -> None:
    with pytest.raises(Unauthorized) as info:
        table().authenticate(None, None)
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"
    assert "Missing API key" in info.value.message


def test_open_mode_when_no_keys() -> None:
    keys = KeyTable(())
    assert keys.open
    assert keys.authenticate(None, None) is ANONYMOUS
    assert keys.authenticate("anything", "at-all") is ANONYMOUS
    assert ANONYMOUS.allows("any-model")
    assert not table().open


@pytest.mark.parametrize(
    ("model", "allowed"),
    [
        ("gpt-4o-mini", True),
        ("o3-mini", True),
        ("o4-mini", True),
        ("gpt-4o", False),
        ("GPT-4O-MINI", False),  # case-sensitive
        ("o3-mini-high", False),
        ("o3", False),
    ],
)
def test_model_allowlist_globs(model: str, allowed: bool) -> None:
    bot = table().authenticate(None, BOT)
    assert bot.allows(model) is allowed


def test_no_allowlist_allows_everything_and_empty_allowlist_nothing() -> None:
    assert Caller("a").allows("whatever")
    assert not Caller("a", models=()).allows("whatever")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("  Bearer abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_basic_password() -> None:
    token = base64.b64encode(b"anyone:the-key").decode()
    assert basic_password(f"Basic {token}") == "the-key"
    assert basic_password("Basic !!!") is None
    assert basic_password("Bearer x") is None
    assert basic_password(None) is None
