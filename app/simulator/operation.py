"""The contract between the shared request pipeline (server.py) and one operation module.

An operation is data: its Azure name (quoted in 429 messages), a pure ``route`` function
that says whether a request line is its own and what the path names, and a ``handle``
coroutine that answers a request that already passed auth, deployment checks and the
early faults.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.simulator.asgi import Reply
from app.simulator.faults import Fault
from app.simulator.resource import Resource


@dataclass(frozen=True, slots=True)
class Target:
    """What a request path asks of an operation.

    ``deployment``: named by the path (legacy form); None means it is the body's
    ``model`` when ``model_in_body``, or that the request names no deployment at all
    (e.g. a stored object addressed by id). ``arg``: anything else the path names.
    ``json_body``: the body must be a JSON object.
    """

    deployment: str | None = None
    model_in_body: bool = True
    json_body: bool = True
    arg: str = ""


@dataclass(slots=True)
class Call:
    """One request that reached its operation's handler."""

    resource: Resource
    reply: Reply
    target: Target
    query: bytes
    deployment: str
    data: dict[str, Any]
    fault: Fault | None


@dataclass(frozen=True, slots=True)
class Operation:
    """One Azure operation the simulator serves."""

    name: str
    route: Callable[[str, str, bytes], Target | None]
    handle: Callable[[Call], Awaitable[int | None]]
