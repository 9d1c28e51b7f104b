"""`aoai-gateway demo`: the gateway over two simulated Azure regions, no account.

Everything runs in this one process, on loopback: two `app.simulator`
resources ("eastus" speaking the v1 URL form, "sweden" the legacy one), each
served by its own uvicorn server on a free port, and the real gateway
(`app.server.Server`) in front of them with a configuration built here.
`gpt-4o` lives in both regions, so a failing region shows failover:

    POST /demo/fail/{region}      the region answers 500 to every request
    POST /demo/recover/{region}   it answers again (traffic returns after the cooldown)
    GET  /demo                    which regions are failing

(or, in a terminal, type `fail eastus` / `recover eastus`). Usage goes to a
temporary directory, removed at exit. Ctrl-C stops all three servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import orjson
import uvicorn

from app.accesslog import AccessLog
from app.config import Config, validate
from app.errors import GatewayError, MethodNotAllowed, NotFound
from app.handler import Receive, Scope, Send, send_error
from app.listener import GatewayProtocol
from app.loopback import is_loopback
from app.server import Server, request_id_of
from app.simulator import Fault, SimConfig, Simulator, quiet_drop_logs

REGIONS = ("eastus", "sweden")
SIM_KEYS = ["demo-azure-key-1", "demo-azure-key-2"]  # the simulators' own, never a real key
COOLDOWN = 10.0
MODELS = {
    "gpt-4o": ["eastus/gpt-4o", "sweden/gpt-4o"],
    "gpt-4o-mini": ["sweden/gpt-4o-mini", "eastus/gpt-4o-mini"],
    "o3-mini": ["eastus/o3-mini"],
    "text-embedding-3-small": ["eastus/text-embedding-3-small", "sweden/text-embedding-3-small"],
}
ASK = "Hello from the demo"

log = logging.getLogger("aoai_gateway")


def demo_config(sim_urls: dict[str, str], usage_path: str) -> Config:
    """Open mode (no gateway keys: loopback only), both URL forms, a short cooldown."""
    return validate(
        {
            "resources": {
                "eastus": {"endpoint": sim_urls["eastus"], "keys": SIM_KEYS, "api": "v1"},
                "sweden": {
                    "endpoint": sim_urls["sweden"],
                    "keys": SIM_KEYS,
                    "api": "legacy",
                    "api_version": "2024-10-21",
                },
            },
            "models": MODELS,
            "routing": {"cooldown": COOLDOWN, "first_byte_timeout": 10},
            "state": {"path": usage_path},
        },
        "demo",
    )


class DemoApp:
    """The gateway, plus `/demo/...` routes that break and mend a simulated region."""

    def __init__(self, gateway: Server, sims: dict[str, Simulator]) -> None:
        self.gateway = gateway
        self.sims = sims

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] + "/").startswith("/demo/"):
            request_id = request_id_of(scope)
            try:
                body = self.control(scope["method"], scope["path"].rstrip("/"))
            except GatewayError as exc:
                await send_error(send, exc, request_id)
                return
            data = orjson.dumps(body)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
                (b"x-request-id", request_id.encode("latin-1")),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await self.gateway(scope, receive, send)

    def control(self, method: str, path: str) -> dict[str, Any]:
        parts = path.split("/")[2:]  # "", "demo", ...
        if not parts:
            if method != "GET":
                raise MethodNotAllowed("Use GET /demo.")
            return self.state()
        if len(parts) != 2 or parts[0] not in ("fail", "recover"):
            raise NotFound(
                f"Unknown demo route {path}: use /demo/fail/{{region}} or /demo/recover/{{region}}."
            )
        if method != "POST":
            raise MethodNotAllowed(f"Use POST {path}.")
        action, region = parts
        if region not in self.sims:
            raise NotFound(f"Unknown region '{region}': the demo has {', '.join(self.sims)}.")
        self.set_failing(region, action == "fail")
        return self.state()

    def set_failing(self, region: str, failing: bool) -> None:
        sim = self.sims[region]
        sim.faults.clear()
        if failing:
            sim.add_fault(Fault(mode="500"))
            log.warning("demo: %s now answers HTTP 500 to every request", region)
        else:
            log.warning(
                "demo: %s answers again; the gateway sends it traffic after its %g s cooldown",
                region,
                COOLDOWN,
            )

    def state(self) -> dict[str, Any]:
        return {"regions": {name: {"failing": bool(sim.faults)} for name, sim in self.sims.items()}}


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the demo, which stops all three."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: Any, sock: socket.socket, http: Any = "auto") -> _Server:
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    return _Server(config)


class _Compact:
    """Where the demo's access log goes: each JSON line shortened for a person."""

    def write(self, data: bytes) -> int:
        for line in data.splitlines():
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            sys.stdout.write(_describe(r) + "\n")
        return len(data)

    def flush(self) -> None:
        sys.stdout.flush()


def _describe(r: dict[str, Any]) -> str:
    if "attempts" not in r:  # a route outside the hot path: models, status, a 404, ...
        return f"  {r.get('status')} {r.get('method')} {r.get('path')} in {r.get('duration_ms')} ms"
    where = f"{r.get('resource')}/{r.get('deployment')}" if r.get("resource") else None
    tries = r.get("attempts") or 0
    api = r.get("api")
    what = f"{api} " if api and api != "chat" else ""
    kind = "stream" if r.get("stream") else "request"
    head = f"  {r.get('status')} {r.get('model')} {what}{kind}"
    took = f"in {r.get('duration_ms')} ms"
    if r.get("error") is None and where:
        return f"{head} served by {where} {took}" + (
            f" after {tries} attempts" if tries > 1 else ""
        )
    tried = f", last tried {where} ({tries} attempts)" if where else ""
    return f"{head} failed: {r.get('error')} {took}{tried}"


class _DemoServer(Server):
    async def startup(self) -> None:
        await super().startup()
        assert self.services is not None
        self.services.access_log = AccessLog(cast(BinaryIO, _Compact()))


def _setup_logging() -> None:
    app_log = logging.getLogger("aoai_gateway")
    app_log.setLevel(logging.INFO)
    app_log.propagate = False
    if not app_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("  %(levelname)s %(message)s"))
        app_log.addHandler(handler)


def _curl(url: str, body: dict[str, Any], stream: bool = False) -> str:
    """A copy-and-paste curl line posting ``body`` as JSON."""
    flag = " -N" if stream else ""
    data = json.dumps(body)
    return f"curl{flag} {url} -H 'content-type: application/json' \\\n    -d '{data}'"


def banner(base: str, tty: bool) -> str:
    messages = [{"role": "user", "content": ASK}]
    chat = _curl(
        f"{base}/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "messages": messages},
        True,
    )
    responses = _curl(
        f"{base}/v1/responses", {"model": "gpt-4o", "stream": True, "input": ASK}, True
    )
    embeddings = _curl(
        f"{base}/v1/embeddings", {"model": "text-embedding-3-small", "input": ASK, "dimensions": 8}
    )
    routes = ", ".join(
        f"{m} ({' then '.join(t.split('/')[0] for t in ts)})" for m, ts in MODELS.items()
    )
    lines = [
        "",
        "aoai-gateway demo: the gateway over two simulated Azure regions on this machine.",
        "No Azure account, no keys, no network.",
        "",
        f"  base URL  {base}/v1",
        f"  models    {routes}",
        f"  status    {base}/status",
        "",
        "Stream a chat:",
        f"  {chat}",
        "",
        "The Responses API (what Codex CLI and the OpenAI Agents SDK speak), streamed:",
        f"  {responses}",
        "",
        "Embeddings:",
        f"  {embeddings}",
        "",
        "Codex CLI: in ~/.codex/config.toml, then `AOAI_GATEWAY_KEY=demo codex`:",
        '  model = "gpt-4o"',
        '  model_provider = "aoai-gateway"',
        "  [model_providers.aoai-gateway]",
        '  name = "aoai-gateway demo"',
        f'  base_url = "{base}/v1"',
        '  env_key = "AOAI_GATEWAY_KEY"',
        '  wire_api = "responses"',
        "",
        'Chatbox: Settings > Model Provider > Add, API mode "OpenAI API Compatible":',
        f"  API Host  {base}/v1",
        "  API Path  /chat/completions",
        "  API Key   demo   (any text: the demo has no keys)",
        "  Model     gpt-4o",
        "",
        "Watch failover: make eastus fail, chat again, and sweden answers (response header",
        "x-ms-region; each request's line below names the region that served it):",
        f"  curl -X POST {base}/demo/fail/eastus",
        f"  curl -X POST {base}/demo/recover/eastus   (traffic returns {COOLDOWN:g} s later)",
    ]
    if tty:
        lines.append("  or type `fail eastus` / `recover eastus` and Enter here.")
    lines += ["", "Ctrl-C stops the demo.", ""]
    return "\n".join(lines)


def _on_line(app: DemoApp) -> None:
    line = sys.stdin.readline()
    words = line.split()
    if len(words) == 2 and words[0] in ("fail", "recover", "f", "r"):
        region = next((r for r in app.sims if r.startswith(words[1])), None)
        if region is not None:
            app.set_failing(region, words[0].startswith("f"))
            return
    if words:
        print(
            "  type `fail eastus`, `recover eastus`, `fail sweden` or `recover sweden`", flush=True
        )


async def _serve(gateway_sock: socket.socket, base: str) -> int:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="aoai-gateway-demo-") as tmp:
        sims = {
            region: Simulator(
                SimConfig(keys=list(SIM_KEYS), region=region, chunks=12, chunk_delay=0.05)
            )
            for region in REGIONS
        }
        sim_socks = {region: _bind("127.0.0.1", 0) for region in REGIONS}
        urls = {r: f"http://127.0.0.1:{s.getsockname()[1]}" for r, s in sim_socks.items()}
        config = demo_config(urls, f"{tmp}/usage.db")
        app = DemoApp(_DemoServer(lambda: config, access_log=False), sims)
        sim_servers = [_server(sims[r], sim_socks[r]) for r in REGIONS]
        gateway = _server(app, gateway_sock, GatewayProtocol)  # serve's caller limits
        sim_tasks = [
            loop.create_task(s.serve(sockets=[sim_socks[r]]))
            for s, r in zip(sim_servers, REGIONS, strict=True)
        ]
        gateway_task = loop.create_task(gateway.serve(sockets=[gateway_sock]))

        def stop() -> None:
            if gateway.should_exit:
                gateway.force_exit = True
            gateway.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        tty = sys.stdin.isatty()
        try:
            while not (gateway.started and all(s.started for s in sim_servers)):
                if gateway_task.done() or any(t.done() for t in sim_tasks):
                    print("the demo could not start; see the messages above", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.02)
            print(banner(base, tty), flush=True)
            if tty:
                loop.add_reader(sys.stdin.fileno(), _on_line, app)
            await gateway_task
        finally:
            if tty:
                loop.remove_reader(sys.stdin.fileno())
            gateway.should_exit = True
            for s in sim_servers:
                s.should_exit = True
            await asyncio.gather(gateway_task, *sim_tasks, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    print("demo stopped", flush=True)
    return 0


def run_demo(port: int = 8000, host: str = "127.0.0.1") -> int:
    if not is_loopback(host):
        print(
            f"the demo serves loopback addresses only (it has no keys), not {host}; "
            "use --host 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); try another --port",
            file=sys.stderr,
        )
        return 2
    _setup_logging()
    quiet_drop_logs()
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return asyncio.run(_serve(sock, f"http://{shown}:{sock.getsockname()[1]}"))
