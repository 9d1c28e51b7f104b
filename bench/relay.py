"""The gateway's own cost: relays in front of the raw upstream (`bench.raw`).

The raw upstream answers in ~15 µs of CPU, so what a relay adds is what shows.
Three sides per mode, in rounds (A B C A B C): the raw upstream direct, nginx
`proxy_pass` (one worker, upstream keep-alive; where nginx is installed) and the
gateway with every feature on. Reported per mode: req/s, the gateway's share of
nginx's (the median of each round's ratio: drift moves a round's runs together),
CPU µs per request of each relay process, and the p50 latency each relay adds at
one connection.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.procs import measure

SIDES = ("direct", "nginx", "gateway")


@dataclass(frozen=True)
class Side:
    name: str
    url: str
    headers: dict[str, str]
    pid: int


@dataclass
class Runs:
    """Every run of one mode, by side."""

    mode: str
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    one: dict[str, dict[str, float]] = field(default_factory=dict)  # at 1 connection

    def median(self, side: str, measure: str) -> float:
        return statistics.median(r[measure] for r in self.runs[side])

    def share(self, side: str, of: str) -> float:
        """Median over rounds of side's req/s / of's req/s."""
        pairs = zip(self.runs[of], self.runs[side], strict=True)
        return statistics.median(s["rps"] / o["rps"] for o, s in pairs)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side, runs in self.runs.items():
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            if side in self.one:
                row["p50_ms_1conn"] = self.one[side]["p50_ms"]
                row["added_p50_ms_1conn"] = self.one[side]["p50_ms"] - self.one["direct"]["p50_ms"]
            out[side] = row
        out["gateway_share_of_direct"] = self.share("gateway", "direct")
        if "nginx" in self.runs:
            out["gateway_share_of_nginx"] = self.share("gateway", "nginx")
            out["nginx_share_of_direct"] = self.share("nginx", "direct")
        out["runs"] = self.runs
        return out


def run(
    modes: dict[str, bytes],
    sides: list[Side],
    rounds: int,
    connections: int,
    seconds: float,
    one_seconds: float,
) -> dict[str, Any]:
    """Each mode (name -> request body) through each side; the results as `summary()`."""
    out = {}
    for mode, body in modes.items():
        runs = Runs(mode)
        for r in range(rounds):
            for side in sides:
                m = measure(side.url, side.headers, body, connections, seconds, side.pid)
                runs.runs.setdefault(side.name, []).append(m)
                print(
                    f"  raw {mode:12} round {r + 1} {side.name:7} {m['rps']:9.0f} req/s  "
                    f"p50 {m['p50_ms']:.2f} ms  errors {m['errors']:.0f}  "
                    f"cpu {m['cpu_us_per_req']:.0f} us/req",
                    flush=True,
                )
        for side in sides:
            runs.one[side.name] = measure(side.url, side.headers, body, 1, one_seconds, side.pid)
        out[mode] = runs.summary()
    return out


def errors(results: dict[str, Any]) -> int:
    return int(
        sum(r["errors"] for m in results.values() for runs in m["runs"].values() for r in runs)
    )


def report(results: dict[str, Any], connections: int) -> str:
    """The relay table: one row per side, plain and stream beside each other."""
    modes = list(results)
    head = " | ".join(f"{m} req/s (c{connections})" for m in modes)
    cpu = " | ".join(f"{m} CPU/req" for m in modes)
    added = " | ".join(f"{m} added p50 (c1)" for m in modes)
    lines = [
        f"| raw upstream, through | {head} | share of nginx | {cpu} | {added} |",
        "|---" * (2 + 3 * len(modes)) + "|",
    ]
    for side in SIDES:
        if side not in results[modes[0]]:
            continue
        rows = [results[m][side] for m in modes]
        rps = " | ".join(f"{r['rps']:.0f}" for r in rows)
        if side == "gateway" and "gateway_share_of_nginx" in results[modes[0]]:
            share = " / ".join(f"**{results[m]['gateway_share_of_nginx']:.2f}**" for m in modes)
        elif side == "nginx":
            share = "1"
        else:
            share = ""
        cpus = " | ".join(f"{r['cpu_us_per_req']:.0f} us" for r in rows)
        adds = " | ".join(
            "" if side == "direct" else f"{r['added_p50_ms_1conn']:+.2f} ms" for r in rows
        )
        name = {"direct": "nothing (direct)", "nginx": "nginx proxy_pass, 1 worker"}.get(
            side, "the gateway, every feature on"
        )
        lines.append(f"| {name} | {rps} | {share} | {cpus} | {adds} |")
    return "\n".join(lines)
