"""``python -m app.simulator``: serve one simulated resource with uvicorn."""

from __future__ import annotations

import argparse
import logging

from app.simulator.resource import SimConfig
from app.simulator.server import Simulator


class _QuietDrop(logging.Filter):
    """Hide uvicorn's error line for responses cut on purpose by the "drop" fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def quiet_drop_logs() -> None:
    """Install the drop-noise filter on uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrop) for f in logger.filters):
        logger.addFilter(_QuietDrop())


def run(host: str, port: int, config: SimConfig | None = None) -> None:
    """Serve a Simulator with uvicorn until interrupted (over TLS with `config.tls`)."""
    import uvicorn

    quiet_drop_logs()
    tls = config.tls if config is not None else None
    uvicorn.run(
        Simulator(config),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> tuple[str, int, SimConfig]:
    """Parse CLI arguments into (host, port, config)."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="python -m app.simulator", description="Simulated Azure OpenAI resource."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--keys", type=_csv, default=d.keys, help="comma-separated api keys")
    p.add_argument("--deployments", type=_csv, default=d.deployments, help="comma-separated")
    p.add_argument("--region", default=d.region)
    p.add_argument("--chunks", type=int, default=d.chunks)
    p.add_argument("--chunk-delay", type=float, default=d.chunk_delay)
    p.add_argument("--latency", type=float, default=d.latency)
    p.add_argument("--reply", default=None, help="fixed reply text")
    p.add_argument("--token-ttl", type=float, default=d.token_ttl, help="s an Entra token lives")
    p.add_argument("--identity-header", default=d.identity_header, help="IDENTITY_HEADER")
    p.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    a = p.parse_args(argv)
    config = SimConfig(
        keys=a.keys,
        deployments=a.deployments,
        region=a.region,
        chunks=a.chunks,
        chunk_delay=a.chunk_delay,
        latency=a.latency,
        reply=a.reply,
        token_ttl=a.token_ttl,
        identity_header=a.identity_header,
        tls=(a.tls_cert, a.tls_key) if a.tls_cert and a.tls_key else None,
    )
    return a.host, a.port, config


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    host, port, config = parse_args(argv)
    run(host, port, config)
