"""One simulated Azure resource's configuration and mutable state, and its control API.

Everything a test can change or read back lives here: faults, revoked keys, the
simulated Entra ID (`entra.Identity`), request counters and the last requests
received. `Simulator` (server.py) serves HTTP on top.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from app.simulator.asgi import Headers, header, parse_or_none
from app.simulator.auth import Keys
from app.simulator.entra import Identity
from app.simulator.faults import Fault
from app.simulator.forms import parse_form
from app.simulator.store import ResponseStore

RECORDED_REQUESTS: Final = 100


@dataclass
class SimConfig:
    """Static configuration of one simulated resource."""

    keys: list[str] = field(default_factory=lambda: ["sim-key-1", "sim-key-2"])
    deployments: list[str] = field(
        default_factory=lambda: [
            "gpt-4o",
            "gpt-4o-mini",
            "o3-mini",
            "gpt-5.2-chat",
            "gpt-image-1",
            "dall-e-3",
            "whisper",
            "gpt-4o-transcribe",
            "tts",
            "gpt-4o-mini-tts",
            "text-embedding-3-small",
        ]
    )
    region: str = "eastus"
    chunks: int = 8
    chunk_delay: float = 0.0
    latency: float = 0.0
    reply: str | None = None
    token_ttl: float = 3600.0  # s a token from the identity endpoint lives
    identity_header: str = "sim-identity-header"  # IDENTITY_HEADER of the identity endpoint
    entra_secret: str = "sim-entra-secret"  # shared by every simulator of a test session
    tls: tuple[str, str] | None = None  # (certificate, key) PEM files: serve https

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError("chunks must be >= 1")


@dataclass
class Stats:
    """Request counters; dict keys are strings, as in ``GET /_sim/stats``."""

    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_deployment: dict[str, int] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)


class Resource:
    """A resource's state: config, keys, deployments, faults, counters, recorded requests."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.stats = Stats()
        self.faults: list[Fault] = []
        self.keys = Keys(self.config.keys)
        c = self.config
        self.identity = Identity(c.entra_secret, c.identity_header, c.token_ttl)
        self.deployments = frozenset(self.config.deployments)
        self.responses = ResponseStore()
        self.base_headers: Headers = [(b"x-ms-region", self.config.region.encode())]
        self._recorded: deque[tuple[str, bytes, Headers, bytes]] = deque(maxlen=RECORDED_REQUESTS)

    def add_fault(self, fault: Fault) -> None:
        """Inject a fault (a copy is stored; first matching fault wins)."""
        if fault.count != 0:
            self.faults.append(dataclasses.replace(fault))

    def revoke_key(self, key: str) -> None:
        """Stop accepting ``key``."""
        self.keys.revoke(key)

    def reset(self) -> None:
        """Clear faults, revoked keys, stats (except in_flight), recorded requests and stored
        responses."""
        self.faults.clear()
        self.responses.clear()
        self.keys.reset()
        self.identity.reset()
        self.stats = Stats(in_flight=self.stats.in_flight)
        self._recorded.clear()

    def record(self, path: str, query: bytes, headers: Headers, body: bytes) -> None:
        """Remember a request for ``recorded_requests`` (the last 100 are kept).

        A multipart body is kept as its fields and the names and sizes of its files
        (`Form.summary`), so recorded uploads cost no memory and read back as JSON.
        """
        content_type = header(headers, b"content-type")
        if content_type.startswith(b"multipart/"):
            form = parse_form(body, content_type)
            body = orjson.dumps(form.summary()) if form is not None else b""
        self._recorded.append((path, query, headers, body))

    def recorded_requests(self) -> list[dict[str, Any]]:
        """The last recorded API requests, newest last, with bodies parsed."""
        return [
            {
                "path": path,
                "query": query.decode("latin-1"),
                "headers": {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in headers},
                "body": parse_or_none(body),
            }
            for path, query, headers, body in self._recorded
        ]
