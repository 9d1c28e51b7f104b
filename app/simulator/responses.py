"""The Responses API, as an Azure resource serves it.

Routes: v1 ``/openai/v1/responses`` and legacy ``/openai/responses?api-version=X``
(deployment = body ``model``; legacy versions before 2025-03-01-preview get Azure's 400),
each with ``POST`` (create), ``GET``/``DELETE /{id}``, ``GET /{id}/input_items`` and
``POST /{id}/cancel``; ``GET /{id}?stream=true&starting_after=N`` resumes a background
stream. Responses are stored on this resource unless ``store: false``; a
``previous_response_id`` it does not hold is Azure's 400 ``previous_response_not_found``.
The wire shapes are in ``responses_wire.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import orjson

from app.simulator import errors
from app.simulator import responses_wire as wire
from app.simulator.asgi import RATELIMIT, Receive, Reply, query_param, wait_disconnect
from app.simulator.faults import Fault
from app.simulator.models import is_embedding, is_reasoning, model_version, split_pieces
from app.simulator.operation import Call, Operation, Target
from app.simulator.resource import Resource
from app.simulator.store import StoredResponse

_V1: Final = "/openai/v1/responses"
_LEGACY: Final = "/openai/responses"
_DELTA: Final = b"event: response.output_text.delta\n"
_OLD_API_VERSION: Final = (
    b'{"error":{"code":"BadRequest","message":"Azure OpenAI Responses API is enabled only for'
    b' api-version 2025-03-01-preview and later"}}'
)
_SYNC_CANCEL: Final = errors.invalid_request("Cannot cancel a synchronous response.")
_NOT_BACKGROUND: Final = errors.invalid_request(
    "This response cannot be streamed because it was not created with background=true.",
    "stream",
)
_ACTIONS: Final = {
    ("GET", ""): "retrieve",
    ("DELETE", ""): "delete",
    ("GET", "input_items"): "input_items",
    ("POST", "cancel"): "cancel",
}


def route(method: str, path: str, query: bytes) -> Target | None:
    """Which Responses route a request line is, and the response id it names."""
    reject = b""
    if path == _V1 or path.startswith(_V1 + "/"):
        rest = path[len(_V1) :]
    elif path == _LEGACY or path.startswith(_LEGACY + "/"):
        version = query_param(query, b"api-version")
        if not version:
            return None
        rest = path[len(_LEGACY) :]
        reject = _OLD_API_VERSION if wire.api_version_too_old(version) else b""
    else:
        return None
    if not rest:
        return Target(action="create", reject=reject) if method == "POST" else None
    response_id, _, sub = rest[1:].partition("/")
    action = _ACTIONS.get((method, sub))
    if not response_id or action is None:
        return None
    return Target(
        model_in_body=False, json_body=False, arg=response_id, action=action, reject=reject
    )


def deployment_of(resource: Resource, target: Target) -> str:
    """The deployment that produced a stored response ("" if not stored here)."""
    stored = resource.responses.get(target.arg)
    return stored.deployment if stored is not None else ""


async def handle(call: Call) -> int | None:
    """Dispatch to the route's action."""
    if call.target.action == "create":
        return await _create(call)
    stored = call.resource.responses.get(call.target.arg)
    if stored is None:
        return await call.reply.json(404, wire.not_found(call.target.arg))
    action = call.target.action
    if action == "retrieve":
        return await _retrieve(call, stored)
    if action == "delete":
        call.resource.responses.delete(call.target.arg)
        body = {"id": call.target.arg, "object": "response", "deleted": True}
        return await call.reply.json(200, orjson.dumps(body))
    if action == "input_items":
        return await _input_items(call, stored)
    return await _cancel(call, stored)


# --- create ----------------------------------------------------------------------------------


async def _create(call: Call) -> int | None:
    data, deployment, reply = call.data, call.deployment, call.reply
    if is_embedding(deployment):
        return await reply.json(400, errors.operation_not_supported("responses", deployment))
    reasoning = is_reasoning(deployment)
    error = wire.validate(data, reasoning)
    if error is not None:
        return await reply.json(400, error)
    responses = call.resource.responses
    context = 0
    previous_id = data.get("previous_response_id")
    if previous_id:
        previous = responses.get(previous_id)
        if previous is None:
            return await reply.json(400, wire.previous_not_found(previous_id))
        used = previous.body.get("usage") or {}
        context = int(used.get("input_tokens", 0)) + int(used.get("output_tokens", 0))
    items = wire.input_items(data)
    model = model_version(deployment)
    turn = wire.compute_turn(data, items, model, reasoning, call.resource.config.reply, context)
    response_id = wire.new_id("resp")
    start = wire.response_body(data, response_id, int(time.time()), turn)
    background = data.get("background") is True
    pieces = split_pieces(turn.reply, call.resource.config.chunks)
    plan = wire.event_plan(start, turn, pieces, queued=background)
    final: dict[str, Any] = plan[-1]["response"]
    stream = data.get("stream") is True

    if background:
        stored = StoredResponse(plan[0]["response"], deployment, items, background=True)
        responses.put(response_id, stored)
        stored.task = asyncio.create_task(_run(stored, plan, call.resource.config.chunk_delay))
        if stream:
            return await _follow(call.reply, stored, -1, call.fault)
        return await reply.json(200, orjson.dumps(stored.body), RATELIMIT)
    if start["store"]:
        responses.put(response_id, StoredResponse(final, deployment, items))
    if stream:
        return await _stream(call, plan)
    payload = orjson.dumps(final)
    if call.fault is not None and call.fault.mode == "drop":
        return await reply.drop_json(payload)
    return await reply.json(200, payload, RATELIMIT)


async def _stream(call: Call, plan: list[dict[str, Any]]) -> int | None:
    """Send a foreground stream; cut by a "drop" fault or ended by a disconnect."""
    reply = call.reply
    limit = _drop_after(call.fault)
    delay = call.resource.config.chunk_delay
    await reply.start_stream()
    deltas = 0
    for seq, event in enumerate(plan):
        if event["type"] == "response.output_text.delta":
            if deltas == limit:
                return 200
            if deltas and delay > 0 and await wait_disconnect(reply.receive, delay):
                return None
            deltas += 1
        await reply.chunk(wire.frame(event, seq))
    await reply.chunk(b"", more=False)
    return 200


async def _run(stored: StoredResponse, plan: list[dict[str, Any]], delay: float) -> None:
    """Write a background response's events into its log, as a model would produce them."""
    deltas = 0
    for seq, event in enumerate(plan):
        if event["type"] == "response.output_text.delta":
            if deltas and delay > 0:
                await asyncio.sleep(delay)
            deltas += 1
        if "response" in event:
            stored.body = event["response"]
        stored.add_event(wire.frame(event, seq))


async def _follow(
    reply: Reply, stored: StoredResponse, after: int, fault: Fault | None
) -> int | None:
    """Stream a background response's events after sequence number ``after``, live."""
    await reply.start_stream()
    limit = _drop_after(fault)
    deltas = 0
    seq = max(after + 1, 0)
    while True:
        while seq < len(stored.events):
            frame = stored.events[seq]
            if frame.startswith(_DELTA):
                if deltas == limit:
                    return 200
                deltas += 1
            await reply.chunk(frame)
            seq += 1
        if stored.finished:
            break
        if await _wait_change(stored, reply.receive):
            return None
    await reply.chunk(b"", more=False)
    return 200


async def _wait_change(stored: StoredResponse, receive: Receive) -> bool:
    """Wait for the stored response to change; True if the client left meanwhile."""
    change = asyncio.ensure_future(stored.changed())
    message = asyncio.ensure_future(receive())
    done, pending = await asyncio.wait({change, message}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return message in done and message.result()["type"] == "http.disconnect"


def _drop_after(fault: Fault | None) -> int:
    """How many text deltas a stream sends before a "drop" fault cuts it (-1: none)."""
    return fault.after_chunks if fault is not None and fault.mode == "drop" else -1


# --- the routes on a stored response ---------------------------------------------------------


async def _retrieve(call: Call, stored: StoredResponse) -> int | None:
    if query_param(call.query, b"stream") != b"true":
        return await call.reply.json(200, orjson.dumps(stored.body))
    if not stored.background:
        return await call.reply.json(400, _NOT_BACKGROUND)
    raw = query_param(call.query, b"starting_after") or b"-1"
    try:
        after = int(raw)
    except ValueError:
        msg = "Invalid 'starting_after': expected an integer."
        return await call.reply.json(400, errors.invalid_request(msg, "starting_after"))
    return await _follow(call.reply, stored, after, call.fault)


async def _input_items(call: Call, stored: StoredResponse) -> int | None:
    order = query_param(call.query, b"order") or b"desc"
    items = list(stored.input_items)
    if order == b"desc":
        items.reverse()
    after = query_param(call.query, b"after")
    if after:
        ids = [i["id"] for i in items]
        after_id = after.decode("latin-1")
        items = items[ids.index(after_id) + 1 :] if after_id in ids else []
    try:
        limit = int(query_param(call.query, b"limit") or b"20")
    except ValueError:
        limit = 20
    page = items[: max(1, min(limit, 100))]
    body = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
    return await call.reply.json(200, orjson.dumps(body))


async def _cancel(call: Call, stored: StoredResponse) -> int | None:
    if not stored.background:
        return await call.reply.json(400, _SYNC_CANCEL)
    if not stored.finished:
        if stored.task is not None:
            stored.task.cancel()
        stored.body = dict(stored.body, status="cancelled")
        stored.notify()
    return await call.reply.json(200, orjson.dumps(stored.body))


OPERATION: Final = Operation(
    name="Responses_Create", route=route, handle=handle, deployment_of=deployment_of
)
