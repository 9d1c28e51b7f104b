"""The ASGI app: admin routes under ``/_sim/``, the simulated managed-identity token
endpoint (``entra.IDENTITY_PATH``), and the pipeline every operation shares.

For an API request, in Azure's order: record it, wait ``latency``, find the operation
whose ``route`` takes the request line (else 404), check the key or Entra ID token
(401), the deployment the path names (404 DeploymentNotFound), the JSON or multipart
body and its ``model`` (400/404), count it, apply an early fault, then let the operation answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import orjson

from app.simulator import (
    chat,
    embeddings,
    entra,
    errors,
    images,
    responses,
    speech,
    transcription,
)
from app.simulator.asgi import (
    Headers,
    Receive,
    Reply,
    Scope,
    Send,
    header,
    lifespan,
    parse_or_none,
    read_body,
    wait_disconnect,
)
from app.simulator.faults import early_fault, fault_from_json, take_fault
from app.simulator.forms import Form, parse_form
from app.simulator.operation import Call, Operation, Target
from app.simulator.resource import Resource

# Every operation the resource serves; the first whose route takes a request wins.
OPERATIONS: Final[tuple[Operation, ...]] = (
    chat.OPERATION,
    responses.OPERATION,
    embeddings.OPERATION,
    *images.OPERATIONS,
    *transcription.OPERATIONS,
    speech.OPERATION,
)


def find_operation(method: str, path: str, query: bytes) -> tuple[Operation, Target] | None:
    """The operation serving a request line, and what its path names."""
    for operation in OPERATIONS:
        target = operation.route(method, path, query)
        if target is not None:
            return operation, target
    return None


class Simulator(Resource):
    """One simulated Azure OpenAI resource (an ASGI app) and its mutable state."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (http and lifespan)."""
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if (
                path.startswith("/_sim/")
                or path in ("/healthz", entra.IDENTITY_PATH)
                or path.endswith(entra.OAUTH_SUFFIX)
            ):
                await self._admin(scope, Reply(receive, send, self.base_headers))
            else:
                await self._api(scope, Reply(receive, send, self.base_headers))
        elif kind == "lifespan":
            await lifespan(receive, send)

    # admin routes

    async def _admin(self, scope: Scope, reply: Reply) -> None:
        body = await read_body(reply.receive)
        if body is None:
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", "/healthz"):
            await reply.json(200, b'{"status":"ok"}')
        elif route == ("GET", "/_sim/stats"):
            await reply.json(200, orjson.dumps(self.stats.as_dict()))
        elif route == ("GET", "/_sim/requests"):
            await reply.json(200, orjson.dumps(self.recorded_requests()))
        elif route == ("GET", "/_sim/faults"):
            await reply.json(200, orjson.dumps([dataclasses.asdict(f) for f in self.faults]))
        elif route == ("POST", "/_sim/reset"):
            self.reset()
            await reply.empty()
        elif route == ("POST", "/_sim/faults"):
            try:
                self.add_fault(fault_from_json(parse_or_none(body)))
            except ValueError as exc:
                await reply.json(400, errors.invalid_request(str(exc)))
                return
            await reply.empty()
        elif route == ("GET", entra.IDENTITY_PATH):
            status, answer = self.identity.token_endpoint(scope["query_string"], scope["headers"])
            await reply.json(status, answer)
        elif scope["method"] == "POST" and scope["path"].endswith(entra.OAUTH_SUFFIX):
            tenant = scope["path"][1 : -len(entra.OAUTH_SUFFIX)]
            status, answer = self.identity.oauth_token(tenant, body)
            await reply.json(status, answer)
        elif route == ("GET", "/_sim/entra"):
            await reply.json(200, orjson.dumps(self.identity.stats()))
        elif route == ("POST", "/_sim/entra"):
            try:
                self.identity.control(parse_or_none(body))
            except ValueError as exc:
                await reply.json(400, errors.invalid_request(str(exc)))
                return
            await reply.empty()
        elif route == ("POST", "/_sim/revoke"):
            obj = parse_or_none(body)
            key = obj.get("key") if isinstance(obj, dict) else None
            if not isinstance(key, str):
                await reply.json(400, errors.invalid_request('body must be {"key": "..."}'))
                return
            self.revoke_key(key)
            await reply.empty()
        else:
            await reply.json(404, errors.NOT_FOUND)

    # API routes

    async def _api(self, scope: Scope, reply: Reply) -> None:
        self.stats.requests += 1
        self.stats.in_flight += 1
        try:
            status = await self._api_inner(scope, reply)
        finally:
            self.stats.in_flight -= 1
        stats = self.stats  # re-read: a reset may have replaced it meanwhile
        if status is None:
            stats.disconnects += 1
        else:
            key = str(status)
            stats.by_status[key] = stats.by_status.get(key, 0) + 1

    async def _api_inner(self, scope: Scope, reply: Reply) -> int | None:
        """Serve one API request; returns the status sent, or None if the client left."""
        body = await read_body(reply.receive)
        if body is None:
            return None
        path: str = scope["path"]
        query: bytes = scope["query_string"]
        headers: Headers = scope["headers"]
        self.record(path, query, headers, body)
        if self.config.latency > 0 and await wait_disconnect(reply.receive, self.config.latency):
            return None

        found = find_operation(scope["method"], path, query)
        if found is None:
            return await reply.json(404, errors.NOT_FOUND)
        operation, target = found
        label = self.keys.check(headers)
        if label is None:
            if entra.bearer(headers) is None:
                return await reply.json(401, errors.UNAUTHORIZED)
            label, refusal = self.identity.check(headers)  # a Microsoft Entra ID token
            if label is None:
                return await reply.json(401, refusal)
        self.stats.by_key[label] = self.stats.by_key.get(label, 0) + 1
        if target.reject:
            return await reply.json(400, target.reject)
        if target.deployment is not None and target.deployment not in self.deployments:
            return await reply.json(404, errors.DEPLOYMENT_NOT_FOUND)

        data: dict[str, Any] = {}
        form: Form | None = None
        if target.form_body:
            form = parse_form(body, header(headers, b"content-type"))
            if form is None:
                msg = "The request body must be multipart/form-data with a boundary."
                return await reply.json(400, errors.invalid_request(msg))
            data = {name: values[0] for name, values in form.fields.items()}
        elif target.json_body:
            parsed = _parse_body(body)
            if isinstance(parsed, bytes):
                return await reply.json(400, parsed)
            data = parsed
        deployment = target.deployment or ""
        if target.deployment is None and target.model_in_body:
            model = data.get("model")
            if not isinstance(model, str) or not model:
                msg = "you must provide a model parameter"
                return await reply.json(400, errors.invalid_request(msg))
            if model not in self.deployments:
                return await reply.json(404, errors.DEPLOYMENT_NOT_FOUND)
            deployment = model
        elif not deployment and operation.deployment_of is not None:
            deployment = operation.deployment_of(self, target)
        if deployment:
            by_dep = self.stats.by_deployment
            by_dep[deployment] = by_dep.get(deployment, 0) + 1

        fault = take_fault(self.faults, deployment) if self.faults else None
        if fault is not None:
            status = await early_fault(fault, reply, operation.name, headers)
            if status != 0:
                return status
        call = Call(self, reply, target, query, deployment, data, fault, form)
        return await operation.handle(call)


def _parse_body(body: bytes) -> dict[str, Any] | bytes:
    """The JSON object a body holds, or the 400 error body to answer with."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return errors.invalid_request(errors.BAD_JSON % exc)
    if not isinstance(data, dict):
        return errors.invalid_request("Request body must be an object.")
    return data
