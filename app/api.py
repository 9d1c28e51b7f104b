"""The FastAPI app for everything but the chat hot path.

Model listing (what Chatbox's "Fetch" calls), health, metrics, usage and the
status page. Handlers are thin: the current `Gateway` comes from the server,
and every error leaves as an OpenAI-shaped body through `GatewayError`.
"""

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from app.auth import Caller, basic_password, bearer_token
from app.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
)
from app.gateway import Gateway
from app.metrics import CONTENT_TYPE
from app.report import summary
from app.routing import allowed_models
from app.status import admin_caller, collect, render
from app.usage import StoreUnavailable


def build_api(current: Callable[[], Gateway], loaded_at: Callable[[], int]) -> FastAPI:
    api = FastAPI(
        title="aoai-gateway",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # server._dispatch strips a trailing slash instead
    )

    def gateway() -> Gateway:
        return current()

    def caller(request: Request, gw: Annotated[Gateway, Depends(gateway)]) -> Caller:
        return gw.keys.authenticate(
            bearer_token(request.headers.get("authorization")),
            (request.headers.get("api-key") or "").strip() or None,
        )

    def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if not who.admin:
            raise Forbidden("This route is for admin keys only.")
        return who

    @api.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return Response(
            exc.body(),
            status_code=exc.status,
            media_type="application/json",
            headers={k.decode(): v.decode() for k, v in exc.headers()},
        )

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        err: GatewayError
        if exc.status_code == 404:
            err = NotFound(f"Unknown route: {request.method} {request.url.path}")
        elif exc.status_code == 405:
            err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}")
        else:
            err = GatewayError(str(exc.detail))
            err.status = exc.status_code
        return await gateway_error(request, err)

    @api.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return await gateway_error(request, BadRequest(f"{loc}: {first.get('msg', 'invalid')}"))

    def list_models(
        gw: Annotated[Gateway, Depends(gateway)], who: Annotated[Caller, Depends(caller)]
    ) -> dict[str, Any]:
        created = loaded_at()
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "azure"}
            for m in allowed_models(gw.table, who.allows)
        ]
        return {"object": "list", "data": data}

    for path in ("/v1/models", "/models", "/openai/models", "/openai/v1/models"):
        api.add_api_route(path, list_models, methods=["GET"])

    @api.get("/v1/models/{model:path}")
    def get_model(
        model: str,
        gw: Annotated[Gateway, Depends(gateway)],
        who: Annotated[Caller, Depends(caller)],
    ) -> dict[str, Any]:
        if model not in gw.table or not who.allows(model):
            raise NotFound(f"The model '{model}' does not exist", code="model_not_found")
        return {"id": model, "object": "model", "created": loaded_at(), "owned_by": "azure"}

    @api.get("/status")
    async def status(request: Request, gw: Annotated[Gateway, Depends(gateway)]) -> Response:
        h = request.headers
        admin_caller(gw, h.get("authorization"), h.get("api-key"))
        page = render(await collect(gw, loaded_at()))
        return Response(page, media_type="text/html; charset=utf-8")

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/metrics")
    def metrics(request: Request, gw: Annotated[Gateway, Depends(gateway)]) -> Response:
        if gw.config.gateway.metrics_auth:  # Prometheus: Bearer (authorization:) or basic_auth
            auth = request.headers.get("authorization")
            who = gw.keys.authenticate(
                bearer_token(auth) or basic_password(auth),
                (request.headers.get("api-key") or "").strip() or None,
            )
            if not who.admin:
                raise Forbidden("/metrics is for admin keys only (gateway.metrics_auth).")
        return Response(gw.services.metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/admin/usage")
    async def usage(
        gw: Annotated[Gateway, Depends(gateway)],
        _: Annotated[Caller, Depends(admin)],
        since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
    ) -> JSONResponse:
        if since is not None:
            try:
                dt.date.fromisoformat(since)
            except ValueError:
                raise BadRequest(f"since: '{since}' is not a date", param="since") from None
        try:
            rows = await gw.services.usage.rows(since)
        except StoreUnavailable as exc:
            err = GatewayError(f"The usage store is unavailable ({exc}).", code="usage_unavailable")
            err.status = 503
            raise err from None
        return JSONResponse(
            {
                **summary(rows),
                "since": since,
                "as_of": dt.datetime.now(dt.UTC).isoformat(),
                "prices_as_of": gw.prices.table.as_of,
            }
        )

    return api
