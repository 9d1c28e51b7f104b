"""The contract between the shared request pipeline (server.py) and one operation module.

An operation is data: its Azure name (quoted in 429 messages), a pure ``route`` function
that says whether a request line is its own and what the path names, and a ``handle``
coroutine that answers a request that already passed auth, deployment checks and the
early faults.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from app.simulator.asgi import Reply, query_param, wait_disconnect
from app.simulator.faults import Fault
from app.simulator.forms import Form
from app.simulator.resource import Resource


@dataclass(frozen=True, slots=True)
class Target:
    """What a request path asks of an operation.

    ``deployment``: named by the path (legacy form); None means it is the body's
    ``model`` when ``model_in_body``, or that the request names no deployment at all
    (e.g. a stored object addressed by id). ``arg``: anything else the path names.
    ``json_body``: the body must be a JSON object; ``form_body``: a ``multipart/form-data``
    form (its ``model`` field then names the deployment when ``model_in_body``).
    ``action``: which of the operation's routes it is (e.g. ``retrieve``). ``reject``: a 400
    body to answer once the key is checked (e.g. an api-version that predates the operation).
    """

    deployment: str | None = None
    model_in_body: bool = True
    json_body: bool = True
    form_body: bool = False
    arg: str = ""
    action: str = ""
    reject: bytes = b""


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
    form: Form | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One Azure operation the simulator serves."""

    name: str
    route: Callable[[str, str, bytes], Target | None]
    handle: Callable[[Call], Awaitable[int | None]]
    # For requests naming no deployment (a stored object by id): the deployment that
    # owns it, so deployment-scoped faults and counters apply ("" if unknown).
    deployment_of: Callable[[Resource, Target], str] | None = None


V1_PREFIX: Final = "/openai/v1"
LEGACY_PREFIX: Final = "/openai/deployments/"


def deployment_route(
    suffix: str, *, form_body: bool = False, v1_needs_version: bool = True
) -> Callable[[str, str, bytes], Target | None]:
    """The route function of a POST operation at ``suffix`` (e.g. ``/images/generations``).

    Legacy: ``/openai/deployments/{deployment}{suffix}?api-version=X``. v1:
    ``/openai/v1{suffix}`` with the deployment in the body's ``model``; Azure keeps images
    and audio in preview on v1, so they need ``?api-version=preview`` there too
    (``v1_needs_version``); chat and embeddings are GA on v1 and need none.
    """
    v1_path = V1_PREFIX + suffix

    def route(method: str, path: str, query: bytes) -> Target | None:
        if method != "POST":
            return None
        versioned = bool(query_param(query, b"api-version"))
        if path == v1_path and (versioned or not v1_needs_version):
            return Target(json_body=not form_body, form_body=form_body)
        if not versioned:
            return None
        if path.startswith(LEGACY_PREFIX) and path.endswith(suffix):
            deployment = path[len(LEGACY_PREFIX) : -len(suffix)]
            if deployment and "/" not in deployment:
                return Target(deployment=deployment, json_body=not form_body, form_body=form_body)
        return None

    return route


async def send_pieces(call: Call, frames: list[bytes], tail: bytes) -> int | None:
    """Send a started stream's ``frames`` ``chunk_delay`` apart, then ``tail`` to end it.

    A "drop" fault cuts the stream after ``after_chunks`` frames, never sending ``tail``;
    returns None if the client left meanwhile.
    """
    reply, fault = call.reply, call.fault
    delay = call.resource.config.chunk_delay
    limit = fault.after_chunks if fault is not None and fault.mode == "drop" else -1
    for n, frame in enumerate(frames):
        if n == limit:
            return 200
        if n and delay > 0 and await wait_disconnect(reply.receive, delay):
            return None
        await reply.chunk(frame)
    if limit >= 0:
        return 200
    await reply.chunk(tail, more=False)
    return 200
