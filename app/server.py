"""The ASGI application: dispatch, lifespan, reload.

    CORS -> dispatch -> an operation's route -> app.handler.handle (plain ASGI)
                     -> everything else      -> app.api (FastAPI)

The operations' routes (chat, Responses, embeddings: `app.operations.route`)
never enter FastAPI or any middleware stack: a path check sends them straight
to the hot path. `Server` owns the long-lived services
(upstream client, state, metrics, usage) and the current `Gateway`, which a
reload (SIGHUP, `--watch`, or `reload()`) replaces atomically; requests in
flight finish on the `Gateway` they started with. Nothing lives at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from app.accesslog import AccessLog
from app.affinity import DAY, SQLiteAffinity
from app.api import build_api
from app.auth import bearer_token
from app.budget import Budgets
from app.config import (
    Config,
    ConfigError,
    config_from_env,
    load,
    resolve_path,
    with_env_redis,
)
from app.cors import CORS
from app.errors import GatewayError, MethodNotAllowed
from app.gateway import Gateway, Services
from app.h1 import H1Upstream
from app.handler import (
    Message,
    Receive,
    Scope,
    Send,
    handle,
    new_request_id,
    request_id,
    send_error,
)
from app.listener import LIMITS_KEY, Limits
from app.logs import ENV_FORMAT
from app.loopback import exposure_error, keyless_refusal
from app.metrics import Metrics
from app.operations import route
from app.state import MemoryState, State
from app.upstream import AiohttpUpstream, Upstream
from app.usage import RedisStore, SQLiteStore, Store, Usage

log = logging.getLogger("aoai_gateway")

DEFAULT_USAGE_PATH = "aoai-gateway.db"
# The address `serve --workers N` listens on, for each worker's checks (`create_app`).
ENV_HOST = "AOAI_GATEWAY_HOST"

Loader = Callable[[], Config]


class Server:
    def __init__(
        self,
        loader: Loader,
        *,
        watch: Path | None = None,
        access_log: bool = True,
        make_state: Callable[[Config, Metrics], State] | None = None,
        make_store: Callable[[Config], Store] | None = None,
        host: str | None = None,
        log_format: str = "json",
    ) -> None:
        self.loader = loader
        self.log_format = log_format  # the access log's: "json" or "text"
        self.host = host  # the listener's address; None: the embedder checks exposure itself
        self.watch = watch
        self.access_log = access_log
        self._make_state = make_state or default_state
        self._make_store = make_store or default_store
        self.gateway: Gateway | None = None
        self.services: Services | None = None
        self.loaded_at = int(time.time())
        self.reloads = 0
        self.api = build_api(self.current, lambda: self.loaded_at)
        self._app = CORS(self._dispatch, self._origins)
        self._watcher: asyncio.Task[None] | None = None
        self._listener_state: dict[str, Any] | None = None

    def current(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the gateway has not started")
        return self.gateway

    def _origins(self) -> tuple[str, ...]:
        gw = self.gateway
        return gw.config.gateway.cors_origins if gw is not None else ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.current().keys.open:  # keyless: this machine's own callers only
                refused = keyless_refusal(scope["method"], scope["headers"])
                if refused is not None:
                    request_id, started = request_id_of(scope), time.perf_counter()
                    await send_error(send, refused, request_id)
                    self._log_other(scope, request_id, refused.status, started)
                    return
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                # Served as without the slash: no redirect, whose Location would be
                # built from the caller's Host header.
                path = path.rstrip("/") or "/"
                scope = {**scope, "path": path, "raw_path": path.encode()}
            found = route(path)
            if found is not None and scope["method"] in found.methods:
                await handle(self.current(), found, scope, receive, send)  # logs itself
                return
            request_id = request_id_of(scope)
            started = time.perf_counter()
            sent = _Sent(send if found else _with_request_id(request_id, send))
            try:
                if found is not None:  # an operation's route, another method
                    if found.response_id is not None:  # the log never shows a stored id
                        path = path.replace(found.response_id, "{id}")
                        scope = {**scope, "path": path}
                    error = MethodNotAllowed(f"Use {' or '.join(found.methods)} for {path}.")
                    await send_error(sent, error, request_id)
                else:
                    await self.api(scope, receive, sent)
            finally:
                self._log_other(scope, request_id, sent.status, started)
            return
        await self.api(scope, receive, send)

    def _log_other(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        """The access-log line of a request outside the hot path (models, admin, 404, ...)."""
        services, gw = self.services, self.gateway
        if services is None or services.access_log is None or gw is None:
            return
        if scope["path"] == "/healthz" and status == 200:
            return  # health checks every few seconds would drown the log
        headers = dict(scope["headers"])
        auth, api_key = headers.get(b"authorization"), headers.get(b"api-key")
        try:
            key = gw.keys.authenticate(
                bearer_token(auth.decode("latin-1")) if auth else None,
                api_key.decode("latin-1").strip() if api_key else None,
            ).name
        except GatewayError:
            key = "-"
        services.access_log.write(
            {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "key": key,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )

    # lifecycle ---------------------------------------------------------------
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn hands this dict to every new connection: the listener's limits go there.
        self._listener_state = scope.get("state")
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except ConfigError as exc:
                    await send({"type": "lifespan.startup.failed", "message": exc.render()})
                    return
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        config = self._load()
        tune_gc()
        metrics = Metrics(cooling=self._cooling_source)
        state = self._make_state(config, metrics)
        usage = Usage(self._make_store(config))
        budgets = Budgets(usage, metrics)
        self.services = Services(make_upstream(os.environ), state, metrics, usage, budgets)
        if self.access_log:
            self.services.access_log = AccessLog(fmt=self.log_format)
        await state.start()
        await usage.start()
        self._use(config)
        await budgets.start()  # after the gateway: it says which keys have budgets
        await self.services.credentials.start()  # first Entra ID tokens; failures are logged
        self.loaded_at = int(time.time())
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.watch is not None:
            self._watcher = loop.create_task(self._watch_file(self.watch))
        log.info("serving %d models from %d resources", len(config.models), len(config.resources))

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.services is not None:
            s = self.services
            if s.tasks:
                await asyncio.gather(*s.tasks, return_exceptions=True)
            await s.budgets.close()
            await s.usage.close()
            await s.state.close()
            await s.credentials.close()
            s.watches.close()
            await s.upstream.aclose()
            s.attempt_log.close()
            if s.access_log is not None:
                s.access_log.flush()

    def _cooling_source(self) -> Any:
        gw = self.gateway
        return gw.cooling_view if gw is not None else None

    def reload(self) -> bool:
        """Swap in a freshly loaded config; keep the old one if it is invalid."""
        if self.services is None:
            return False
        try:
            config = self._load()
        except ConfigError as exc:
            log.error("reload refused, still serving the previous configuration:\n%s", exc.render())
            return False
        old = self.gateway
        if old is not None and config.state != old.config.state:
            log.warning("state: settings changed; they take effect at the next restart")
        self._use(config)
        self.services.spawn(self.services.credentials.start(wait=0))  # new Entra ID settings
        self.reloads += 1
        log.info("configuration reloaded: %d models", len(config.models))
        return True

    def _use(self, config: Config) -> None:
        assert self.services is not None
        self.gateway = Gateway(config, self.services)
        if self._listener_state is not None:  # new connections take the new limits
            self._listener_state[LIMITS_KEY] = Limits.of(config.gateway)

    def _load(self) -> Config:
        """The configuration, if it is valid and safe to serve on this server's address."""
        config = self.loader()
        refused = None if self.host is None else exposure_error(config, self.host)
        if refused is not None:
            raise ConfigError([refused])
        return config

    async def _watch_file(self, path: Path) -> None:
        def stamp() -> float:
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        last = stamp()
        while True:
            await asyncio.sleep(1.0)
            now = stamp()
            if now != last:
                last = now
                self.reload()


def request_id_of(scope: Scope) -> str:
    """The client's `x-request-id` if it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return request_id(value)
    return new_request_id()


class _Sent:
    """`send`, remembering the status it answered with (0: nothing was sent)."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)


def _with_request_id(request_id_text: str, send: Send) -> Send:
    request_id = request_id_text.encode("latin-1")

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
        await send(message)

    return wrapped


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server.

    With CPython's defaults (a young collection every 700 allocations) the
    benchmark showed collections stalling the loop: p99 ~50 ms against ~10 ms
    with these settings, and ~10% more requests per second (README,
    Performance). A request allocates a few hundred short-lived objects and
    almost no reference cycles, so collecting rarely loses nothing; what
    startup built moves to the permanent generation and is never scanned again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def make_upstream(environ: Mapping[str, str]) -> Upstream:
    """The lean HTTP/1.1 client, or aiohttp where an HTTP(S) proxy must be used."""
    proxied = any(
        environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
    )
    choice = environ.get("AOAI_GATEWAY_UPSTREAM_CLIENT") or ("aiohttp" if proxied else "h1")
    return AiohttpUpstream(trust_env=True) if choice == "aiohttp" else H1Upstream()


def default_state(config: Config, metrics: Metrics) -> State:
    ttl = config.state.responses_ttl_days * DAY
    if config.state.redis_url:
        from app.redis_state import RedisState

        return RedisState(config.state.redis_url, metrics, ttl=ttl)
    return MemoryState(SQLiteAffinity(config.state.path or DEFAULT_USAGE_PATH, ttl), ttl)


def default_store(config: Config) -> Store:
    if config.state.redis_url:
        return RedisStore(config.state.redis_url)
    return SQLiteStore(config.state.path or DEFAULT_USAGE_PATH)


def make_loader(path: Path | None, environ: Mapping[str, str]) -> Loader:
    """Read the file each time it is called (for reloads), or the environment."""
    if path is not None:
        return lambda: with_env_redis(load(path, environ), environ)

    def from_env() -> Config:
        config = config_from_env(environ)
        if config is None:
            raise ConfigError(
                [
                    "no configuration: pass --config PATH, set AOAI_GATEWAY_CONFIG, create "
                    "config/gateway.yaml, or set AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY "
                    "and AZURE_OPENAI_DEPLOYMENTS"
                ]
            )
        return with_env_redis(config, environ)

    return from_env


def create_app() -> Server:
    """uvicorn factory for `--workers N`: configuration from the environment."""
    path = resolve_path(None, os.environ)
    access_log = os.environ.get("AOAI_GATEWAY_ACCESS_LOG", "1") != "0"
    log_format = os.environ.get(ENV_FORMAT, "json")
    # Not told the address (uvicorn run by hand): assume any, so keyless is refused.
    host = os.environ.get(ENV_HOST) or "0.0.0.0"
    return Server(
        make_loader(path, os.environ), access_log=access_log, host=host, log_format=log_format
    )
