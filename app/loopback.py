"""Keyless mode is for this machine only.

With no `gateway.keys` every caller is let in as admin, so the gateway must be
reachable from this machine alone: `exposure_error` refuses a keyless
configuration on a non-loopback listener, at start-up and at every reload
(SIGHUP, `--watch`, each worker of `--workers N`).
"""

from __future__ import annotations

import ipaddress

from app.config import Config

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_error(config: Config, host: str) -> str | None:
    """Why `config` must not be served on `host`, or None when it may."""
    if config.gateway.keys or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host}: no gateway.keys are configured, so anyone who "
        "can reach it could use your Azure quota. Add gateway.keys to the configuration "
        "(see config/example.yaml), or serve on 127.0.0.1."
    )
