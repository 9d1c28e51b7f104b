"""Simulated Microsoft Entra ID: a managed-identity token endpoint and the resource's token check.

The token endpoint speaks App Service's managed-identity protocol, as azure-identity's
`ManagedIdentityCredential` calls it when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are
set (`azure/identity/_credentials/app_service.py`):

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=https://cognitiveservices.azure.com
        [&client_id=...]
    X-IDENTITY-HEADER: {IDENTITY_HEADER}
    -> 200 {"access_token": "...", "expires_on": "1735689600", "resource": "...",
            "token_type": "Bearer", "client_id": "..."}

Tokens are `simtok.<expires_on>.<nonce>.<mac>`, signed with a secret every simulator of a
test session shares, so a token one simulator issued is accepted by all, like one
Entra ID tenant in front of several resources. A resource accepts a token it can verify
that has not expired and was not revoked; otherwise it answers 401 as Azure does, and
with `deny` (the identity lacks a role) 401 PermissionDenied.

It also answers as Entra ID's own token endpoint, for the credentials that talk to it
(workload identity, client secret: `AZURE_AUTHORITY_HOST` pointed at a simulator served
over TLS, as azure-identity requires https there):

    POST /{tenant}/oauth2/v2.0/token   (form: grant_type=client_credentials, client_id, scope,
        client_assertion + client_assertion_type (workload identity) or client_secret)
    -> 200 {"token_type": "Bearer", "expires_in": 3599, "access_token": "..."}

Control (`/_sim/entra`): `ttl` (seconds a new token lives), `fail` (the token endpoint
answers 500 to the next `fail` requests; -1: until reset), `deny`, `revoke` (every token
this resource has accepted so far stops working).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any, Final

import orjson

IDENTITY_PATH: Final = "/msi/token"
OAUTH_SUFFIX: Final = "/oauth2/v2.0/token"
JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
API_VERSION: Final = "2019-08-01"
PREFIX: Final = "simtok."

INVALID_TOKEN: Final = (
    b'{"error":{"code":"401","message":"Unauthorized. Access token is missing, invalid,'
    b' audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}'
)
PERMISSION_DENIED: Final = (
    b'{"error":{"code":"PermissionDenied","message":"The principal `00000000-0000-0000-0000-'
    b"000000000000` lacks the required data action `Microsoft.CognitiveServices/accounts/"
    b"OpenAI/deployments/chat/completions/action` to perform `POST /openai/deployments/"
    b'{deployment-id}/chat/completions` operation."}}'
)
ENDPOINT_DOWN: Final = (
    b'{"statusCode":500,"message":"An unexpected error occurred while fetching the AAD Token."}'
)


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of `Authorization: Bearer simtok...`, if the request presents one."""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            token = value[7:].strip()
            return token if token.startswith(PREFIX.encode()) else None
    return None


class Identity:
    """Issues tokens at the identity endpoint and checks the ones a request presents."""

    def __init__(self, secret: str, identity_header: str, ttl: float) -> None:
        self._secret = secret.encode()
        self.identity_header = identity_header
        self.default_ttl = ttl
        self.reset()

    def reset(self) -> None:
        self.ttl = self.default_ttl
        self.fail = 0  # token requests still to fail; -1: all of them
        self.deny = False
        self.issued = 0
        self.accepted = 0
        self.token_requests: list[dict[str, Any]] = []  # query and client id, never a token
        self._seen: set[bytes] = set()
        self._revoked: set[bytes] = set()

    # the resource side -----------------------------------------------------------

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bytes]:
        """("entra", b"") for a token this resource accepts, else (None, the 401 body)."""
        token = bearer(headers)
        if token is None or not self.verify(token) or token in self._revoked:
            return None, INVALID_TOKEN
        if self.deny:
            return None, PERMISSION_DENIED
        self._seen.add(token)
        self.accepted += 1
        return "entra", b""

    def verify(self, token: bytes) -> bool:
        try:
            _, expires, nonce, mac = token.decode("ascii").split(".")
            alive = float(expires) > time.time()
        except (UnicodeDecodeError, ValueError):
            return False
        return alive and hmac.compare_digest(mac, self._mac(expires, nonce))

    def revoke(self) -> None:
        self._revoked |= self._seen

    # the identity endpoint -----------------------------------------------------------

    def issue(self) -> tuple[str, int]:
        expires = int(time.time() + self.ttl)
        nonce = os.urandom(8).hex()
        self.issued += 1
        return f"{PREFIX}{expires}.{nonce}.{self._mac(str(expires), nonce)}", expires

    def token_endpoint(
        self, query: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]:
        """(status, body) of one App Service managed-identity token request."""
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query.decode("latin-1")).items()}
        presented = dict(headers).get(b"x-identity-header", b"").decode("latin-1")
        self.token_requests.append(
            {"params": params, "identity_header_ok": presented == self.identity_header}
        )
        if presented != self.identity_header:
            return 401, b'{"statusCode":401,"message":"Unauthorized: X-IDENTITY-HEADER"}'
        if params.get("api-version") != API_VERSION or not params.get("resource"):
            return 400, b'{"statusCode":400,"message":"api-version and resource are required"}'
        if self.fail:
            self.fail -= 1 if self.fail > 0 else 0
            return 500, ENDPOINT_DOWN
        token, expires = self.issue()
        return 200, orjson.dumps(
            {
                "access_token": token,
                "expires_on": str(expires),
                "resource": params["resource"],
                "token_type": "Bearer",
                "client_id": params.get("client_id", "00000000-0000-0000-0000-000000000000"),
            }
        )

    def oauth_token(self, tenant: str, form: bytes) -> tuple[int, bytes]:
        """(status, body) of one client-credentials request to Entra ID's token endpoint."""
        fields = {k: v[0] for k, v in urllib.parse.parse_qs(form.decode("latin-1")).items()}
        assertion = fields.get("client_assertion_type") == JWT_BEARER
        proof = fields.get("client_assertion" if assertion else "client_secret") or ""
        self.token_requests.append(
            {
                "tenant": tenant,
                "client_id": fields.get("client_id"),
                "scope": fields.get("scope"),
                "grant_type": fields.get("grant_type"),
                "with": "client_assertion" if assertion else "client_secret",
                # what was presented, as a digest: a test compares it with what it configured
                "proof_sha256": hashlib.sha256(proof.encode()).hexdigest(),
            }
        )
        if fields.get("grant_type") != "client_credentials" or not fields.get("client_id"):
            return 400, b'{"error":"invalid_request","error_description":"AADSTS900144"}'
        if self.fail:
            self.fail -= 1 if self.fail > 0 else 0
            return 500, b'{"error":"temporarily_unavailable","error_description":"AADSTS50196"}'
        token, expires = self.issue()
        return 200, orjson.dumps(
            {
                "token_type": "Bearer",
                "expires_in": expires - int(time.time()),
                "ext_expires_in": expires - int(time.time()),
                "access_token": token,
            }
        )

    def control(self, obj: Any) -> None:
        """Apply a `/_sim/entra` body; ValueError for a bad one."""
        if not isinstance(obj, dict) or not set(obj) <= {"ttl", "fail", "deny", "revoke"}:
            raise ValueError('body must be {"ttl"?, "fail"?, "deny"?, "revoke"?}')
        if "ttl" in obj:
            if not isinstance(obj["ttl"], int | float) or obj["ttl"] <= 0:
                raise ValueError("ttl must be a positive number of seconds")
            self.ttl = float(obj["ttl"])
        if "fail" in obj:
            if not isinstance(obj["fail"], int) or obj["fail"] < -1:
                raise ValueError("fail must be a count, or -1 for every request")
            self.fail = obj["fail"]
        if "deny" in obj:
            self.deny = bool(obj["deny"])
        if obj.get("revoke"):
            self.revoke()

    def stats(self) -> dict[str, Any]:
        return {
            "issued": self.issued,
            "accepted": self.accepted,
            "ttl": self.ttl,
            "fail": self.fail,
            "deny": self.deny,
            "token_requests": self.token_requests[-20:],
        }

    def _mac(self, expires: str, nonce: str) -> str:
        msg = f"{expires}.{nonce}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]
