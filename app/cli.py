"""`aoai-gateway serve | check [--probe] | demo | usage | hash-key`.

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
from typing import Any

from app import __version__, logs
from app.check import describe, warnings
from app.config import ENV_GATEWAY_KEY, Config, ConfigError, resolve_path
from app.envfile import load_env_file
from app.listener import GatewayProtocol
from app.logs import Format
from app.loopback import exposure_error, is_loopback
from app.server import ENV_HOST, Server, make_loader

__all__ = ["describe", "is_loopback", "main", "parser"]


def setup_logging(level: str, fmt: Format = "text") -> None:
    logs.setup(fmt, level)


def _config_path(args: argparse.Namespace) -> Path | None:
    return resolve_path(args.config, os.environ)


def load_config(args: argparse.Namespace) -> Config:
    if args.env_file:
        load_env_file(Path(args.env_file), os.environ)
    return make_loader(_config_path(args), os.environ)()


def _env_key_ignored(args: argparse.Namespace) -> bool:
    return _config_path(args) is not None and bool(os.environ.get(ENV_GATEWAY_KEY))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = load_config(args)
    refused = exposure_error(config, args.host)
    if refused is not None:
        print(refused, file=sys.stderr)
        return 2
    fmt = logs.choose_format(args.log_format, sys.stderr)
    setup_logging(args.log_level, fmt)
    for warning in warnings(config, args.host, _env_key_ignored(args)):
        logging.getLogger("aoai_gateway").warning("configuration: %s", warning)
    path = _config_path(args)
    common = dict(
        host=args.host,
        port=args.port,
        loop="uvloop",
        http=GatewayProtocol,  # uvicorn's httptools protocol with the caller limits
        access_log=False,
        log_level=args.log_level,
        log_config=logs.log_config(fmt, args.log_level),  # every worker logs the same way
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
        os.environ[logs.ENV_FORMAT] = fmt
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
        log_format=fmt,
        host=args.host,
    )
    uvicorn.run(server, **common)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    path = _config_path(args)
    source = str(path) if path else "environment (AZURE_OPENAI_*)"
    print(describe(config, source, args.host, _env_key_ignored(args)))
    if not config.models:
        print(
            "check FAILED: the configuration has no models, so the gateway could serve "
            "nothing; add models: (see config/example.yaml)",
            file=sys.stderr,
        )
        return 2
    if args.probe:
        from app.probe import run_probe

        return run_probe(config, timeout=args.timeout)
    return 0


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


def cmd_usage(args: argparse.Namespace) -> int:
    """The usage and cost report, read from the store: no running server needed."""
    import asyncio
    import datetime as dt

    from app.report import render
    from app.server import DEFAULT_USAGE_PATH, default_store
    from app.usage import StoreUnavailable

    if args.since is not None:
        try:
            dt.date.fromisoformat(args.since)
        except ValueError:
            print(f"--since: '{args.since}' is not a date (YYYY-MM-DD)", file=sys.stderr)
            return 2
    config = load_config(args)
    path = config.state.path or DEFAULT_USAGE_PATH
    if not config.state.redis_url and not Path(path).exists():
        print(
            f"no usage store at {path} (state.path, relative to where the gateway runs): "
            "nothing recorded yet, or run this where the gateway runs",
            file=sys.stderr,
        )
        return 1
    store = default_store(config)

    async def read() -> Any:
        try:
            return await store.read(args.since)
        finally:
            await store.close()

    try:
        rows = asyncio.run(read())
    except StoreUnavailable as exc:
        print(f"the usage store did not answer: {exc}", file=sys.stderr)
        return 1
    try:
        print(render(rows, args.by, args.format, args.since), flush=True)
    except BrokenPipeError:  # `usage ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aoai-gateway",
        description="One OpenAI-compatible endpoint over many Azure OpenAI / Foundry resources.",
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=f"aoai-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            metavar="PATH",
            help="YAML file (default: $AOAI_GATEWAY_CONFIG, else config/gateway.yaml, "
            "else AZURE_OPENAI_* variables)",
        )
        sp.add_argument(
            "--env-file",
            metavar="PATH",
            help="KEY=VALUE lines (# comments) to set before reading the configuration, e.g. "
            "config/gateway.env; variables already set win",
        )

    def listen(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument(
            "--host",
            default="127.0.0.1",
            help=f"address {what} listens on; 0.0.0.0 for every interface",
        )

    s = sub.add_parser("serve", help="run the gateway", formatter_class=_Help)
    with_config(s)
    listen(s, "the gateway")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument(
        "--workers", type=int, default=1, help="processes (see README: How many workers)"
    )
    s.add_argument("--watch", action="store_true", help="reload when the config file changes")
    s.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight requests get at shutdown"
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the gateway's own log lines below this level are not written",
    )
    s.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines (stderr) and access-log lines (stdout) (default: text when stderr "
        "is a terminal, else json)",
    )
    s.add_argument("--no-access-log", action="store_true", help="no line per request")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser(
        "check",
        help="validate the configuration and print the routing table",
        formatter_class=_Help,
    )
    with_config(c)
    listen(c, "serve")
    c.add_argument(
        "--probe", action="store_true", help="make a 1-token call per resource x key x deployment"
    )
    c.add_argument("--timeout", type=float, default=20.0, help="seconds per probe call")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser(
        "demo",
        help="the gateway over two simulated Azure regions; no account needed",
        formatter_class=_Help,
    )
    d.add_argument("--host", default="127.0.0.1", help="loopback address the demo listens on")
    d.add_argument("--port", type=int, default=8000, help="TCP port")
    d.set_defaults(func=cmd_demo)

    u = sub.add_parser(
        "usage",
        help="usage and cost per key, model or day, read from the store (no server needed)",
        formatter_class=_Help,
    )
    with_config(u)
    u.add_argument("--since", metavar="DATE", help="from this UTC day on (YYYY-MM-DD)")
    u.add_argument("--by", choices=["key", "model", "day"], default="key", help="one row per")
    u.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output")
    u.set_defaults(func=cmd_usage)

    h = sub.add_parser(
        "hash-key", help="print the sha256 of a gateway key, for key_sha256:", formatter_class=_Help
    )
    h.add_argument("key", nargs="?", help="the key (default: read from standard input)")
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
