"""Which api keys the resource accepts right now (keys can be revoked until a reset)."""

from __future__ import annotations

from collections.abc import Iterable


def key_label(key: str) -> str:
    """Stats label of a key: its first 4 characters and an ellipsis."""
    return key[:4] + "\u2026"


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key from ``api-key`` or ``Authorization: Bearer``; ``api-key`` wins."""
    bearer = None
    for name, value in headers:
        if name == b"api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
    return bearer


class Keys:
    """The resource's keys: each maps to its stats label while not revoked."""

    __slots__ = ("_active", "_labels")

    def __init__(self, keys: Iterable[str]) -> None:
        self._labels = {k.encode(): key_label(k) for k in keys}
        self._active = dict(self._labels)

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The label of the valid key the request presents, else None."""
        key = presented_key(headers)
        return self._active.get(key) if key is not None else None

    def revoke(self, key: str) -> None:
        """Stop accepting ``key``."""
        self._active.pop(key.encode(), None)

    def reset(self) -> None:
        """Accept every configured key again."""
        self._active = dict(self._labels)
