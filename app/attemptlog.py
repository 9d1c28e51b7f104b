"""One warning per failed upstream attempt, and a summary instead of a flood.

When a region goes down every request that tries it fails the same way; a line
per attempt would bury everything else. `AttemptLog.failed` writes the first
failure of a kind (resource, deployment, key id, what happened) at once, counts
the identical ones that follow, and `window` seconds later writes one line
saying how many more there were. The next failure after that starts again, so
a failure that goes on is reported about twice a minute, and a new kind of
failure is never held back. Key values never appear: keys are named by their
hash id (`eastus#5e0c3a1b2c3d`).
"""

from __future__ import annotations

import asyncio
import logging

from app.upstream import ConnectFailed, TimedOut, UpstreamError

Kind = tuple[str, str, str, str]  # resource, deployment, key id, what happened

WINDOW = 30.0


def what_failed(exc: UpstreamError) -> str:
    """`timeout (...)`, `TLS error (...)` or `connect error (...)` for a transport failure."""
    text = str(exc)
    if isinstance(exc, TimedOut):
        return f"timeout ({text})"
    if isinstance(exc, ConnectFailed) and ("SSL" in text or "certificate" in text.lower()):
        return f"TLS error ({text})"
    if isinstance(exc, ConnectFailed):
        return f"connect error ({text})"
    return f"error ({text})"


class AttemptLog:
    __slots__ = ("_log", "_repeats", "window")

    def __init__(self, log: logging.Logger, window: float = WINDOW) -> None:
        self._log = log
        self.window = window
        self._repeats: dict[Kind, int] = {}

    def failed(self, resource: str, deployment: str, key_id: str, what: str) -> None:
        kind = (resource, deployment, key_id, what)
        repeats = self._repeats.get(kind)
        if repeats is not None:
            self._repeats[kind] = repeats + 1
            return
        self._log.warning(
            "upstream attempt failed: resource %s, deployment %s, key %s: %s",
            resource,
            deployment,
            key_id,
            what,
        )
        self._repeats[kind] = 0
        try:
            asyncio.get_running_loop().call_later(self.window, self._summarize, kind)
        except RuntimeError:  # no loop (a unit test): nothing to summarize later
            del self._repeats[kind]

    def _summarize(self, kind: Kind) -> None:
        repeats = self._repeats.pop(kind, 0)
        if repeats:
            resource, deployment, key_id, what = kind
            self._log.warning(
                "upstream attempt failed %d more time%s in the last %g s: resource %s, "
                "deployment %s, key %s: %s",
                repeats,
                "" if repeats == 1 else "s",
                self.window,
                resource,
                deployment,
                key_id,
                what,
            )

    def close(self) -> None:
        """Write what is still counted (at shutdown)."""
        for kind in list(self._repeats):
            self._summarize(kind)
