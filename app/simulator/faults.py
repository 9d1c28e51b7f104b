"""Injected failures, shared by every operation.

A `Fault` is consumed by the first request whose deployment it matches (``"*"``: any).
`early_fault` applies the modes that act before an answer exists (429, 500,
content_filter, hang, slow, and the misbehaving upstream of `hostile`: close, echo,
redirect, huge_body, drip, huge_headers, huge_line); the modes that shape an answer
(``drop``, ``annotations``) are applied by the operation that writes it, since only it
knows its wire format.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from app.simulator import errors, hostile
from app.simulator.asgi import Headers, Reply, wait_disconnect

FAULT_MODES: Final = frozenset(
    {"429", "500", "hang", "drop", "content_filter", "annotations", "slow", *hostile.MODES}
)


@dataclass
class Fault:
    """An injected failure; ``count=None`` applies until reset."""

    mode: str
    deployment: str = "*"
    count: int | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    after_chunks: int = 2
    delay: float = 0.0
    size: int = 0  # bytes, for huge_body, huge_headers and huge_line

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if self.size < 0:
            raise ValueError("size must be >= 0")


def fault_from_json(obj: Any) -> Fault:
    """Build a Fault from a decoded JSON object; raises ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError("fault must be a JSON object")
    names = {f.name for f in dataclasses.fields(Fault)}
    unknown = set(obj) - names
    if unknown:
        raise ValueError(f"unknown fault fields: {sorted(unknown)}")
    kwargs = dict(obj)
    if isinstance(kwargs.get("mode"), int):
        kwargs["mode"] = str(kwargs["mode"])
    checks: dict[str, tuple[type, ...]] = {
        "mode": (str,),
        "deployment": (str,),
        "count": (int, type(None)),
        "retry_after": (int, float, type(None)),
        "retry_after_ms": (int, type(None)),
        "after_chunks": (int,),
        "delay": (int, float),
        "size": (int,),
    }
    for name, value in kwargs.items():
        if not isinstance(value, checks[name]) or isinstance(value, bool):
            raise ValueError(f"invalid type for fault field {name!r}")
    try:
        return Fault(**kwargs)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def retry_headers(fault: Fault) -> tuple[Headers, int]:
    """429 retry headers and the seconds quoted in the message."""
    headers: Headers = []
    seconds: int | None = None
    if fault.retry_after is not None:
        seconds = math.ceil(fault.retry_after)
    elif fault.retry_after_ms is not None:
        seconds = math.ceil(fault.retry_after_ms / 1000)
    if seconds is not None:
        headers.append((b"retry-after", b"%d" % seconds))
    if fault.retry_after_ms is not None:
        ms = b"%d" % fault.retry_after_ms
        headers.append((b"retry-after-ms", ms))
        headers.append((b"x-ms-retry-after-ms", ms))
    return headers, seconds if seconds is not None else 1


def take_fault(faults: list[Fault], deployment: str) -> Fault | None:
    """First fault matching ``deployment``, consuming one use of it."""
    for i, fault in enumerate(faults):
        if fault.deployment in ("*", deployment):
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    del faults[i]
            return fault
    return None


async def early_fault(
    fault: Fault, reply: Reply, operation: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> int | None:
    """Apply a fault that acts before the answer; 0 means go on normally.

    Returns the status sent, or None if the client left while the fault held it (or
    the fault closed the connection). ``operation`` is Azure's operation name quoted
    in the 429 message; ``headers`` are the request's (the ``echo`` mode quotes them).
    """
    mode = fault.mode
    if mode in hostile.MODES:
        return await hostile.answer(mode, reply, list(headers), fault.size, fault.delay)
    if mode == "429":
        extra, seconds = retry_headers(fault)
        return await reply.json(429, errors.too_many_requests(operation, seconds), extra)
    if mode == "500":
        return await reply.json(500, errors.INTERNAL)
    if mode == "content_filter":
        return await reply.json(400, errors.CONTENT_FILTER)
    if mode == "hang":
        await wait_disconnect(reply.receive, None)
        return None
    if mode == "slow" and fault.delay > 0 and await wait_disconnect(reply.receive, fault.delay):
        return None
    return 0
