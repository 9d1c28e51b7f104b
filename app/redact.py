"""Configured Azure key values never pass from an upstream answer onwards.

An upstream may quote the request back - a 4xx body, or a header, echoing the
`api-key` it was sent (issue 10). Every byte of an answer the gateway relays to
a caller (headers it passes, a whole body, each batch of stream events) goes
through `Redactor.bytes`, which replaces any configured key value with
`[redacted]`; log lines and error messages quoting an upstream use `text`.

A key shorter than `MIN_LENGTH` is not searched for: it would turn up in
ordinary text. Azure's keys are 32 or 84 characters.

Entra ID tokens change as they are refreshed: `current` gives the ones in use
now (`upstream_auth.Credentials.secrets`); a gateway with keys only has none
and pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

MIN_LENGTH = 8
MARK = "[redacted]"


class Redactor:
    __slots__ = ("_current", "_encoded", "_keys", "_seen", "_texts")

    def __init__(
        self, secrets: Iterable[str], current: Callable[[], tuple[str, ...]] | None = None
    ) -> None:
        self._current = current
        # longest first: a key that contains another is replaced whole
        texts = sorted({s for s in secrets if len(s) >= MIN_LENGTH}, key=len, reverse=True)
        self._texts = tuple(texts)
        self._keys = tuple(t.encode("utf-8") for t in texts)
        self._seen: tuple[str, ...] = ()
        self._encoded: tuple[bytes, ...] = ()

    def _tokens(self) -> tuple[bytes, ...]:
        """The current tokens, encoded once per refresh rather than once per relayed chunk."""
        assert self._current is not None
        current = self._current()
        if current != self._seen:  # the same token objects compare by identity: cheap
            self._seen = current
            self._encoded = tuple(t.encode("utf-8") for t in current)
        return self._encoded

    def bytes(self, data: bytes) -> bytes:
        for key in self._keys:
            if key in data:
                data = data.replace(key, b"[redacted]")
        if self._current is not None:
            for token in self._tokens():
                if token in data:
                    data = data.replace(token, b"[redacted]")
        return data

    def text(self, data: str) -> str:
        for key in self._texts:
            if key in data:
                data = data.replace(key, MARK)
        if self._current is not None:
            for token in self._current():
                if token in data:
                    data = data.replace(token, MARK)
        return data
