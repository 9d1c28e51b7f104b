"""Keyless mode is for this machine only.

With no `gateway.keys` every caller is let in as admin, so the gateway must be
reachable from this machine alone: `exposure_error` refuses a keyless
configuration on a non-loopback listener, at start-up and at every reload
(SIGHUP, `--watch`, each worker of `--workers N`).

A browser on the same machine can still reach a loopback listener, from any
page: by DNS rebinding (a foreign name resolved to 127.0.0.1, so the request
carries that name in `Host`) or by a cross-site "simple" POST (a form, or
`fetch` with a text/plain body: no preflight). `keyless_refusal` refuses both
on every route: `Host` must name the loopback (`localhost`, `127.0.0.1` or
`[::1]`, any port), and a POST must be `application/json`, which a page can only
send cross-site after a CORS preflight that `gateway.cors_origins` decides (an
upload may be multipart/form-data when it carries an `Authorization` or
`api-key` header, which needs the same preflight).
"""

from __future__ import annotations

import ipaddress

from app.config import Config
from app.errors import Forbidden, GatewayError, UnsupportedMediaType

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
LOOPBACK_HOSTS = (b"localhost", b"127.0.0.1", b"[::1]")  # what keyless mode answers to


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


def loopback_host(value: bytes) -> bool:
    """`Host` is `localhost`, `127.0.0.1` or `[::1]`, with or without a port."""
    host = value.strip().lower()
    for name in LOOPBACK_HOSTS:
        if host == name:
            return True
        if host.startswith(name) and host[len(name) : len(name) + 1] == b":":
            return host[len(name) + 1 :].isdigit()
    return False


def keyless_refusal(method: str, headers: list[tuple[bytes, bytes]]) -> GatewayError | None:
    """Why keyless mode refuses this request (see the module doc), or None."""
    host = content_type = None
    credentials = False
    for name, value in headers:
        if name == b"host":
            host = value
        elif name == b"content-type":
            content_type = value
        elif name in (b"authorization", b"api-key"):
            credentials = True
    if host is None or not loopback_host(host):
        return Forbidden(
            "This gateway has no keys and answers only requests addressed to localhost, "
            "127.0.0.1 or [::1] (the Host header).",
            code="host_not_allowed",
        )
    if method == "POST" and not _json_or_upload(content_type, credentials):
        return UnsupportedMediaType(
            "POST bodies must be sent as 'Content-Type: application/json' (uploads as "
            "multipart/form-data with an Authorization header, as the SDKs send them)."
        )
    return None


def _json_or_upload(content_type: bytes | None, credentials: bool) -> bool:
    """JSON; or an upload (audio, image edits: multipart) with a credentials header, which
    a cross-site form cannot send and a cross-site fetch sends only after a preflight.
    The SDKs send one even to a keyless gateway."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (credentials and media == b"multipart/form-data")
