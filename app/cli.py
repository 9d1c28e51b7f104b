"""`aoai-gateway serve | check [--probe] | demo | hash-key`.

Configuration errors print one line per problem and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from app import __version__
from app.config import Config, ConfigError, resolve_path
from app.loopback import exposure_error, is_loopback
from app.routing import build_table
from app.server import ENV_HOST, Server, make_loader

__all__ = ["is_loopback", "main"]


def setup_logging(level: str) -> None:
    app_log = logging.getLogger("aoai_gateway")
    if not app_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        app_log.addHandler(handler)
    app_log.setLevel(level.upper())
    app_log.propagate = False


def _config_path(args: argparse.Namespace) -> Path | None:
    return resolve_path(args.config, os.environ)


def load_config(args: argparse.Namespace) -> Config:
    return make_loader(_config_path(args), os.environ)()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = load_config(args)
    refused = exposure_error(config, args.host)
    if refused is not None:
        print(refused, file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    path = _config_path(args)
    common = dict(
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.grace,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
    )
    if args.workers > 1:
        if not config.state.redis_url and any(k.rpm or k.tpm for k in config.gateway.keys):
            logging.getLogger("aoai_gateway").warning(
                "--workers %d without state.redis_url: each worker keeps its own rpm/tpm "
                "windows, so a key may use up to %d times its limits; set state.redis_url "
                "(see README: Team features)",
                args.workers,
                args.workers,
            )
        os.environ["AOAI_GATEWAY_ACCESS_LOG"] = "0" if args.no_access_log else "1"
        os.environ[ENV_HOST] = args.host  # each worker checks every (re)load against it
        if path is not None:
            os.environ["AOAI_GATEWAY_CONFIG"] = str(path.resolve())
        made = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
                prefix="aoai-gateway-metrics-"
            )
        try:
            uvicorn.run("app.server:create_app", factory=True, workers=args.workers, **common)
        finally:
            if made is not None:  # ours: the workers' metric files go with them
                shutil.rmtree(made, ignore_errors=True)
        return 0
    server = Server(
        make_loader(path, os.environ),
        watch=path if args.watch else None,
        access_log=not args.no_access_log,
        host=args.host,
    )
    uvicorn.run(server, **common)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    path = _config_path(args)
    print(describe(config, str(path) if path else "environment (AZURE_OPENAI_*)"))
    if args.probe:
        from app.probe import run_probe

        return run_probe(config, timeout=args.timeout)
    return 0


def describe(config: Config, source: str) -> str:
    """The routing table as text; names, URL forms and key counts, never a key."""
    table = build_table(config)
    keys = len(config.gateway.keys)
    lines = [
        f"configuration OK: {source}",
        f"  {_count(len(config.resources), 'resource')}, {_count(len(table), 'model')}, "
        + (_count(keys, "gateway key") if keys else "no gateway keys (serves loopback only)"),
        "",
    ]
    header = (
        "MODEL",
        "PRI",
        "WEIGHT",
        "RESOURCE",
        "DEPLOYMENT",
        "FORM",
        "API-VERSION",
        "KEYS",
        "REASONING",
        "URL",
    )
    rows = [header]
    for model, targets in table.items():
        for t in targets:
            rows.append(
                (
                    model,
                    str(t.priority),
                    f"{t.weight:g}" if t.weighted else "-",
                    t.resource,
                    t.deployment,
                    t.api,
                    t.api_version or "-",
                    str(len(t.keys)),
                    "yes" if t.reasoning else "no",
                    t.url,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(port=args.port, host=args.host)


def cmd_hash_key(args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("give the key as an argument or on standard input", file=sys.stderr)
        return 2
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aoai-gateway",
        description="One OpenAI-compatible endpoint over many Azure OpenAI / Foundry resources.",
    )
    p.add_argument("--version", action="version", version=f"aoai-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            metavar="PATH",
            help="YAML file (default: $AOAI_GATEWAY_CONFIG, else config/gateway.yaml, "
            "else AZURE_OPENAI_* variables)",
        )

    s = sub.add_parser("serve", help="run the gateway")
    with_config(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="processes (see README: Performance)")
    s.add_argument("--watch", action="store_true", help="reload when the config file changes")
    s.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight requests get at shutdown"
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--no-access-log", action="store_true", help="no JSON line per request")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check", help="validate the configuration and print the routing table")
    with_config(c)
    c.add_argument(
        "--probe", action="store_true", help="make a 1-token call per resource x key x deployment"
    )
    c.add_argument("--timeout", type=float, default=20.0, help="seconds per probe call")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser(
        "demo", help="the gateway over two simulated Azure regions; no account needed"
    )
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)
    d.set_defaults(func=cmd_demo)

    h = sub.add_parser("hash-key", help="print the sha256 of a gateway key, for key_sha256:")
    h.add_argument("key", nargs="?")
    h.set_defaults(func=cmd_hash_key)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
