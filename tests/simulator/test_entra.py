"""`app.simulator.entra`: the simulated identity endpoint and the resource's token check."""

from __future__ import annotations

import time

import orjson
import pytest

from app.simulator.entra import INVALID_TOKEN, PERMISSION_DENIED, Identity

HEADER = [(b"x-identity-header", b"h")]
QUERY = b"api-version=2019-08-01&resource=https%3A%2F%2Fcognitiveservices.azure.com"


def identity(ttl: float = 60) -> Identity:
    return Identity("secret", "h", ttl)


def get_token(ident: Identity) -> str:
    status, body = ident.token_endpoint(QUERY, HEADER)
    assert status == 200, body
    data = orjson.loads(body)
    assert data["resource"] == "https://cognitiveservices.azure.com"
    assert data["token_type"] == "Bearer"
    assert int(data["expires_on"]) == pytest.approx(time.time() + 60, abs=2)
    return str(data["access_token"])


def auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + token.encode())]


def test_a_token_issued_by_one_simulator_is_accepted_by_another_with_the_same_secret() -> None:
    token = get_token(identity())
    assert Identity("secret", "other", 1).check(auth(token)) == ("entra", b"")
    assert Identity("another-secret", "h", 1).check(auth(token)) == (None, INVALID_TOKEN)


def test_forged_expired_and_revoked_tokens_are_refused() -> None:
    ident = identity()
    token = get_token(ident)
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert ident.check(auth(forged)) == (None, INVALID_TOKEN)
    expired = identity(ttl=-1).issue()[0]
    assert ident.check(auth(expired)) == (None, INVALID_TOKEN)
    assert ident.check(auth(token))[0] == "entra"
    ident.control({"revoke": True})  # tokens accepted so far stop working
    assert ident.check(auth(token)) == (None, INVALID_TOKEN)
    assert ident.check(auth(get_token(ident)))[0] == "entra"


def test_deny_answers_permission_denied() -> None:
    ident = identity()
    ident.control({"deny": True})
    assert ident.check(auth(get_token(ident))) == (None, PERMISSION_DENIED)


def test_token_endpoint_checks_the_protocol_and_can_fail() -> None:
    ident = identity()
    assert ident.token_endpoint(QUERY, [(b"x-identity-header", b"wrong")])[0] == 401
    assert ident.token_endpoint(b"resource=x", HEADER)[0] == 400
    ident.control({"fail": 2})
    assert [ident.token_endpoint(QUERY, HEADER)[0] for _ in range(3)] == [500, 500, 200]
    ident.control({"fail": -1, "ttl": 5})
    assert [ident.token_endpoint(QUERY, HEADER)[0] for _ in range(3)] == [500, 500, 500]
    ident.reset()
    assert ident.token_endpoint(QUERY, HEADER)[0] == 200 and ident.ttl == 60
    with pytest.raises(ValueError):
        ident.control({"ttl": 0})
    with pytest.raises(ValueError):
        ident.control({"unknown": 1})


def test_oauth_token_endpoint_issues_for_client_credentials() -> None:
    ident = identity()
    form = b"grant_type=client_credentials&client_id=c&scope=s&client_secret=x"
    status, body = ident.oauth_token("tenant", form)
    assert status == 200
    token = orjson.loads(body)["access_token"]
    assert ident.check(auth(token))[0] == "entra"
    assert ident.token_requests[-1]["with"] == "client_secret"
    assert ident.oauth_token("tenant", b"grant_type=password")[0] == 400
    ident.control({"fail": 1})
    assert ident.oauth_token("tenant", form)[0] == 500
