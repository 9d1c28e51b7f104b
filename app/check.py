"""What `aoai-gateway check` prints: the routing table, the gateway keys, notes, warnings.

Pure functions of a validated `Config` (and the address `serve` will listen
on): names, URL forms, limits, hash ids and how each resource authenticates,
never a secret. `warnings` is also logged by `serve` at startup, so a
configuration that loads but cannot work as meant is said out loud in both places.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence

from app.azure import parse_endpoint
from app.config import ENV_GATEWAY_KEY, Config, GatewayKey
from app.loopback import is_loopback
from app.pricing import Prices, configured_prices
from app.routing import Target, build_table
from app.upstream_auth import describe as describe_auth


def describe(
    config: Config, source: str, host: str | None = None, env_key_ignored: bool = False
) -> str:
    """The whole `check` report: summary, routes, keys, then `note:` and `warning:` lines."""
    table = build_table(config)
    keys = len(config.gateway.keys)
    lines = [
        f"configuration OK: {source}",
        f"  {_count(len(config.resources), 'resource')}, {_count(len(table), 'model')}, "
        + (_count(keys, "gateway key") if keys else "no gateway keys (serves loopback only)"),
        "",
        *routes_table(table),
    ]
    if config.gateway.keys:
        lines += ["", *keys_table(config.gateway.keys)]
    notes = endpoint_notes(config)
    found = warnings(config, host, env_key_ignored)
    if notes or found:
        lines.append("")
    lines += [f"note: {n}" for n in notes]
    lines += [f"warning: {w}" for w in found]
    return "\n".join(lines)


def operation_urls(target: Target) -> list[tuple[str, str]]:
    """(operation, exact upstream URL) for every operation the gateway serves: built by
    the operation modules (`app.operations`), the URLs the hot path calls."""
    return list(target.urls.items())


def routes_table(table: Mapping[str, tuple[Target, ...]]) -> list[str]:
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
        "OPERATION",
        "URL",
    )
    rows = [header]
    for model, targets in table.items():
        for t in targets:
            for operation, url in operation_urls(t):
                rows.append(
                    (
                        model,
                        str(t.priority),
                        f"{t.weight:g}" if t.weighted else "-",
                        t.resource,
                        t.deployment,
                        t.api,
                        t.api_version or "-",
                        describe_auth(t.keys),
                        "yes" if t.reasoning else "no",
                        operation,
                        url,
                    )
                )
    return _columns(rows)


def key_hash_id(key: GatewayKey) -> str:
    """The first 12 hex digits of the key's sha256: what `hash-key` prints, cut short."""
    if key.key is not None:
        return hashlib.sha256(key.key.get_secret_value().encode()).hexdigest()[:12]
    return (key.key_sha256 or "").lower()[:12]


def keys_table(keys: tuple[GatewayKey, ...]) -> list[str]:
    rows = [("KEY", "HASH-ID", "ADMIN", "RPM", "TPM", "BUDGET", "MODELS")]
    for k in keys:
        rows.append(
            (
                k.name,
                key_hash_id(k),
                "yes" if k.admin else "no",
                str(k.rpm) if k.rpm is not None else "-",
                str(k.tpm) if k.tpm is not None else "-",
                f"${k.budget.usd:g}/{k.budget.period}" if k.budget is not None else "-",
                ",".join(k.models) if k.models is not None else "*",
            )
        )
    return _columns(rows)


def endpoint_notes(config: Config) -> list[str]:
    """What a pasted URL held besides the origin, and what the gateway does with it."""
    out = []
    for name, res in config.resources.items():
        found = parse_endpoint(res.endpoint)
        if not (found.deployment or found.api_version or found.dropped):
            continue
        said = [f"resources.{name}.endpoint is a pasted URL; the gateway uses {found.base}"]
        if found.deployment:
            said.append(
                f"it names deployment {found.deployment}, which is not used by itself: "
                "models: says which deployments serve a model"
            )
        if found.api_version:
            used = res.api == "legacy" and res.api_version == found.api_version
            said.append(
                f"api-version {found.api_version} "
                + ("is used (api: legacy)" if used else f"is not used (api: {res.api})")
            )
        if found.dropped:
            said.append(f"/{found.dropped} is dropped: the gateway adds each operation's path")
        out.append("; ".join(said))
    return out


def warnings(config: Config, host: str | None = None, env_key_ignored: bool = False) -> list[str]:
    """What loads but will not work as meant; `host` is where `serve` listens."""
    table = build_table(config)
    out = []
    if not table:
        out.append("no models are configured: every request would get 404 (add models:)")
    for i, k in enumerate(config.gateway.keys):
        for pattern in k.models or ():
            if not any(fnmatch.fnmatchcase(m, pattern) for m in table):
                out.append(
                    f"gateway.keys[{i}] ({k.name}): models pattern '{pattern}' matches no "
                    f"model (the models are {', '.join(table) or 'none'})"
                )
        if k.models == ():
            out.append(f"gateway.keys[{i}] ({k.name}): models: [] allows no model at all")
    if len(config.resources) > 1:
        for model, targets in table.items():
            used = {t.resource for t in targets}
            if len(used) == 1:
                (only,) = used
                out.append(
                    f"models.{model}: every deployment is on resource {only}; if it fails "
                    "there is no other resource to fail over to"
                )
    prices = Prices(configured_prices(config))
    for model, targets in table.items():
        names = [model, *(t.deployment for t in targets)]
        if not any(prices.named(n) for n in names) and not any(
            prices.price_for(t.id, None, model) for t in targets
        ):
            out.append(
                f"models.{model}: no price for '{model}' or its deployments' names; its cost "
                "shows as unpriced unless Azure's answers name a priced model (add it under "
                "pricing:)"
            )
    unused = set(config.resources) - {t.resource for ts in table.values() for t in ts}
    for name in sorted(unused):
        out.append(f"resources.{name}: no model uses it")
    if host is not None and not is_loopback(host):
        unlimited = [k.name for k in config.gateway.keys if k.rpm is None and k.tpm is None]
        if unlimited:
            out.append(
                f"serving on {host}: gateway key(s) {', '.join(unlimited)} have no rpm/tpm "
                "limit, so one caller can use all of the Azure quota"
            )
    if env_key_ignored:
        out.append(
            f"{ENV_GATEWAY_KEY} is set but not used: it applies only when the "
            "configuration comes from AZURE_OPENAI_* variables (add it to gateway.keys)"
        )
    return out


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
