"""Gateway key -> caller (name, allowed models, limits, admin).

Keys are held only as SHA-256 digests (a `key:` is hashed at load, a
`key_sha256:` is taken as is), and a presented key is hashed and compared with
every digest by `hmac.compare_digest`, without an early exit, so the time taken
says nothing about which key or how much of it matched.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from app.config import Budget, GatewayKey
from app.errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    admin: bool = False
    budget: Budget | None = None

    def allows(self, model: str) -> bool:
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


ANONYMOUS = Caller(name="anonymous", admin=True)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyTable:
    def __init__(self, keys: Sequence[GatewayKey]) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        for k in keys:
            if k.key is not None:
                d = digest(k.key.get_secret_value())
            else:
                assert k.key_sha256 is not None
                d = bytes.fromhex(k.key_sha256)
            self._entries.append(
                (
                    d,
                    Caller(
                        name=k.name,
                        models=k.models,
                        rpm=k.rpm,
                        tpm=k.tpm,
                        admin=k.admin,
                        budget=k.budget,
                    ),
                )
            )

    @property
    def open(self) -> bool:
        """No keys configured: every caller is let in (loopback-only, see cli)."""
        return not self._entries

    def authenticate(self, bearer: str | None, api_key: str | None) -> Caller:
        if not self._entries:
            return ANONYMOUS
        for presented in (api_key, bearer):
            if presented:
                found = self._match(digest(presented))
                if found is not None:
                    return found
        if bearer or api_key:
            raise Unauthorized("Incorrect API key provided.")
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' or 'api-key: <key>'."
        )

    def _match(self, d: bytes) -> Caller | None:
        found = None
        for stored, caller in self._entries:
            if hmac.compare_digest(stored, d):
                found = caller
        return found


def _credentials(authorization: str | None, scheme: str) -> str | None:
    """The credentials of `Authorization: <scheme> <credentials>`, if that is the scheme."""
    if not authorization:
        return None
    given, _, credentials = authorization.strip().partition(" ")
    if given.lower() != scheme:
        return None
    return credentials.strip() or None


def bearer_token(value: str | None) -> str | None:
    return _credentials(value, "bearer")


def basic_password(authorization: str | None) -> str | None:
    """The password of `Authorization: Basic base64(user:password)`, else None."""
    token = _credentials(authorization, "basic")
    if token is None:
        return None
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None
