"""The benchmark: the gateway against a direct call to the simulator, in one run.

    python -m bench               # the full run (about 5 minutes), prints the README table
    python -m bench --smoke       # seconds; CI runs this to prove the harness works

It starts the project's simulator (one Azure resource) and the gateway exactly
as a user would (`aoai-gateway serve --config ...`) with every foundation
feature on: gateway-key auth, routing, two upstream keys, metrics, usage
capture to SQLite and the JSON access log. Then, for plain and streaming
chat, streamed Responses and embeddings, it alternates direct and through-gateway
runs (A B A B) and reports medians (the ratio is the median of each A/B pair's
ratio); where nginx is installed, a plain nginx `proxy_pass` (one worker, upstream
keep-alive) joins the chat rounds as the limit of any relay on the machine. With latency
percentiles, the CPU per request of each server process, the added p50
latency and time-to-first-token at one connection, 1,000
concurrent open streams with the gateway's peak RSS, and 1 MB bodies.

Then the gateway's own cost (`bench.relay`): chat, plain and streamed, against
the cheapest possible upstream (`bench.raw`, asyncio + httptools, canned
answers), direct, through nginx and through the gateway: req/s, the gateway's
share of nginx's, CPU µs per request and the p50 each relay adds at one
connection.
Ratios are what matter: absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import load, nginx, relay
from bench.procs import free_port, measure, peak_rss_mb, process

SIM_KEY = "bench-azure-key-1"
GATEWAY_KEY = "bench-gateway-key"
MESSAGE = "Hello there, how are you today? Please tell me something nice."


@dataclass(frozen=True)
class Mode:
    """One kind of request, sent the same way direct and through the gateway."""

    name: str
    direct_path: str
    gateway_path: str
    body: bytes
    nginx: bool = False  # also through the plain nginx relay


@dataclass
class Pair:
    name: str
    direct: list[dict[str, float]] = field(default_factory=list)
    gateway: list[dict[str, float]] = field(default_factory=list)
    nginx: list[dict[str, float]] = field(default_factory=list)

    def typical(self, side: str) -> dict[str, float]:
        """Per measure, the median over this side's runs."""
        runs = getattr(self, side)
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    def ratio(self, side: str = "gateway") -> float:
        """Median of side/direct over adjacent A/B runs: drift on a noisy
        machine moves both runs of a pair together, so it cancels out."""
        runs: list[dict[str, float]] = getattr(self, side)
        return statistics.median(
            g["rps"] / d["rps"] for d, g in zip(self.direct, runs, strict=True)
        )


def body_for(model: str, stream: bool, text: str = MESSAGE) -> bytes:
    data: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        data["stream"] = True
    return json.dumps(data).encode()


def responses_body(model: str, text: str = MESSAGE) -> bytes:
    """A streamed Responses request (stored, as the SDKs' default)."""
    return json.dumps({"model": model, "input": text, "stream": True}).encode()


def embeddings_body(model: str, text: str = MESSAGE) -> bytes:
    """An embeddings request as the openai SDKs send it (base64 vectors)."""
    return json.dumps({"model": model, "input": text, "encoding_format": "base64"}).encode()


def modes(relay: bool) -> list[Mode]:
    """Every mode measured; ``relay``: nginx is there to join the chat modes."""
    chat = "/chat/completions"
    return [
        Mode("plain", "/openai/v1" + chat, "/v1" + chat, body_for("gpt-4o", False), relay),
        Mode("stream", "/openai/v1" + chat, "/v1" + chat, body_for("gpt-4o", True), relay),
        Mode("responses stream", "/openai/v1/responses", "/v1/responses", responses_body("gpt-4o")),
        Mode(
            "embeddings",
            "/openai/v1/embeddings",
            "/v1/embeddings",
            embeddings_body("text-embedding-3-small"),
        ),
    ]


_CONTENT = re.compile(rb'"delta":\{"content":"[^"]')


async def ttft_once(url: str, headers: dict[str, str], body: bytes) -> float:
    """Seconds from sending to the first content token's bytes."""
    host, port, raw = load.request_bytes(url, headers, body)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        t0 = time.perf_counter()
        writer.write(raw)
        seen = b""
        while True:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("stream ended before any content")
            seen += data
            if _CONTENT.search(seen):
                return time.perf_counter() - t0
    finally:
        writer.close()


async def ttft(url: str, headers: dict[str, str], body: bytes, n: int) -> float:
    samples = [await ttft_once(url, headers, body) for _ in range(n)]
    return statistics.median(samples)


async def open_streams(url: str, headers: dict[str, str], body: bytes, n: int) -> dict[str, Any]:
    """n streams open at once; each read to [DONE]."""
    host, port, raw = load.request_bytes(url, headers, body)
    done = failed = 0

    async def one() -> None:
        nonlocal done, failed
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw)
            seen = b""
            while b"data: [DONE]" not in seen[-64:]:
                data = await asyncio.wait_for(reader.read(65536), 60)
                if not data:
                    break
                seen += data
            writer.close()
            if b"data: [DONE]" in seen and b'"error"' not in seen:
                done += 1
            else:
                failed += 1
        except (OSError, TimeoutError):
            failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return {
        "streams": n,
        "completed": done,
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def big_bodies(url: str, headers: dict[str, str], model: str, n: int) -> float:
    text = ("lorem ipsum dolor sit amet " * 40000)[: 1024 * 1024]
    body = body_for(model, False, text)
    with httpx.Client(timeout=60) as client:
        client.post(url, content=body, headers=headers).raise_for_status()
        t0 = time.perf_counter()
        for _ in range(n):
            client.post(url, content=body, headers=headers).raise_for_status()
        return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds: proves the harness works")
    p.add_argument("--seconds", type=float, default=8.0, help="per load run")
    p.add_argument("--rounds", type=int, default=3, help="A B pairs per mode")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="gateway workers")
    p.add_argument("--streams", type=int, default=1000, help="concurrent open streams")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.streams = 1.0, 1, 50

    tmp = Path(tempfile.mkdtemp(prefix="aoai-bench-"))
    sim_port, slow_port, gw_port, relay_port = free_port(), free_port(), free_port(), free_port()
    raw_port, raw_relay_port = free_port(), free_port()
    raw_url = f"http://127.0.0.1:{raw_port}"
    nginx_exe = nginx.binary()
    sim_url, slow_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{slow_port}"
    gw_url = f"http://127.0.0.1:{gw_port}"
    config = {
        "gateway": {"keys": [{"name": "bench", "key": GATEWAY_KEY}]},
        "resources": {
            "sim": {"endpoint": sim_url, "keys": [SIM_KEY, "bench-azure-key-2"]},
            "slow": {"endpoint": slow_url, "keys": [SIM_KEY]},
            "raw": {"endpoint": raw_url, "keys": [SIM_KEY]},
        },
        "models": {
            "gpt-4o": ["sim/gpt-4o"],
            "gpt-4o-slow": ["slow/gpt-4o"],
            "gpt-4o-raw": ["raw/gpt-4o"],
            "text-embedding-3-small": ["sim/text-embedding-3-small"],
        },
        "state": {"path": str(tmp / "usage.db")},
    }
    (tmp / "gateway.yaml").write_text(json.dumps(config))
    py = sys.executable
    sim_cmd = [
        py,
        "-m",
        "app.simulator",
        "--port",
        str(sim_port),
        "--keys",
        f"{SIM_KEY},bench-azure-key-2",
    ]
    slow_cmd = [
        py,
        "-m",
        "app.simulator",
        "--port",
        str(slow_port),
        "--keys",
        SIM_KEY,
        "--chunks",
        "20",
        "--chunk-delay",
        "0.05",
    ]
    gw_cmd = [
        py,
        "-m",
        "app",
        "serve",
        "--config",
        str(tmp / "gateway.yaml"),
        "--port",
        str(gw_port),
        "--workers",
        str(args.workers),
    ]
    direct_h = {"content-type": "application/json", "api-key": SIM_KEY}
    gw_h = {"content-type": "application/json", "authorization": f"Bearer {GATEWAY_KEY}"}
    direct_chat = f"{sim_url}/openai/v1/chat/completions"
    gw_chat = f"{gw_url}/v1/chat/completions"
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "load_generator": "wrk -t1" if load.have_wrk() else "python (asyncio)",
        "connections": args.connections,
        "seconds": args.seconds,
        "workers": args.workers,
        "nginx": nginx_exe is not None,
    }
    print(
        f"# aoai-gateway benchmark — {results['machine']}; load: {results['load_generator']}, "
        f"{args.connections} connections, {args.seconds:g}s per run, {args.rounds} A/B rounds",
        flush=True,
    )
    relay_url = f"http://127.0.0.1:{relay_port}"
    raw_relay_url = f"http://127.0.0.1:{raw_relay_port}"
    raw_cmd = [py, "-m", "bench.raw", "--port", str(raw_port)]
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(process(sim_cmd, f"{sim_url}/healthz", tmp / "sim.log"))
        stack.enter_context(process(slow_cmd, f"{slow_url}/healthz", tmp / "slow.log"))
        gw = stack.enter_context(process(gw_cmd, f"{gw_url}/healthz", tmp / "gateway.log"))
        raw = stack.enter_context(process(raw_cmd, f"{raw_url}/healthz", tmp / "raw.log"))
        sim_relay = raw_relay = None
        if nginx_exe is not None:
            relay_cmd = nginx.command(nginx_exe, relay_port, sim_port, tmp)
            sim_relay = stack.enter_context(
                process(relay_cmd, f"{relay_url}/healthz", tmp / "nginx.log")
            )
            (tmp / "raw-nginx").mkdir()
            raw_relay_cmd = nginx.command(nginx_exe, raw_relay_port, raw_port, tmp / "raw-nginx")
            raw_relay = stack.enter_context(
                process(raw_relay_cmd, f"{raw_relay_url}/healthz", tmp / "raw-nginx.log")
            )
        # the gateway's own cost: in front of the cheapest upstream, beside nginx
        chat = "/openai/v1/chat/completions"
        raw_sides = [relay.Side("direct", raw_url + chat, direct_h, raw.pid)]
        if raw_relay is not None:
            raw_sides.append(relay.Side("nginx", raw_relay_url + chat, direct_h, raw_relay.pid))
        raw_sides.append(relay.Side("gateway", gw_chat, gw_h, gw.pid))
        raw_modes = {
            "plain": body_for("gpt-4o-raw", False),
            "stream": body_for("gpt-4o-raw", True),
        }
        raw_results = relay.run(
            raw_modes,
            raw_sides,
            args.rounds,
            args.connections,
            args.seconds,
            min(args.seconds, 2.0),
        )
        pairs = []
        for mode in modes(sim_relay is not None):
            pair = Pair(mode.name)
            sides = [
                ("direct", sim_url + mode.direct_path, direct_h, sim.pid),
                ("gateway", gw_url + mode.gateway_path, gw_h, gw.pid),
            ]
            if mode.nginx and sim_relay is not None:
                sides.append(("nginx", relay_url + mode.direct_path, direct_h, sim_relay.pid))
            for r in range(args.rounds):
                for side, url, hdr, pid in sides:
                    m = measure(url, hdr, mode.body, args.connections, args.seconds, pid)
                    getattr(pair, side).append(m)
                    print(
                        f"  {mode.name:16} round {r + 1} {side:7} {m['rps']:9.0f} req/s  "
                        f"p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms  "
                        f"errors {m['errors']:.0f}  cpu {m['cpu_us_per_req']:.0f} us/req",
                        flush=True,
                    )
            pairs.append(pair)
        one = {}
        for side, url, hdr, pid in (
            ("direct", direct_chat, direct_h, sim.pid),
            ("gateway", gw_chat, gw_h, gw.pid),
        ):
            one[side] = measure(url, hdr, body_for("gpt-4o", False), 1, args.seconds, pid)
        n_ttft = 20 if args.smoke else 200
        t_direct = asyncio.run(ttft(direct_chat, direct_h, body_for("gpt-4o", True), n_ttft))
        t_gw = asyncio.run(ttft(gw_chat, gw_h, body_for("gpt-4o", True), n_ttft))
        streams = asyncio.run(
            open_streams(gw_chat, gw_h, body_for("gpt-4o-slow", True), args.streams)
        )
        n_big = 3 if args.smoke else 20
        big_direct = big_bodies(direct_chat, direct_h, "gpt-4o", n_big)
        big_gw = big_bodies(gw_chat, gw_h, "gpt-4o", n_big)
        rss = peak_rss_mb(gw.pid)

    results["modes"] = {
        p.name: {
            "direct": p.typical("direct"),
            "gateway": p.typical("gateway"),
            "ratio": p.ratio(),
            **({"nginx": p.typical("nginx"), "nginx_ratio": p.ratio("nginx")} if p.nginx else {}),
            "runs": asdict(p),
        }
        for p in pairs
    }
    results["one_connection"] = {
        "direct_p50_ms": one["direct"]["p50_ms"],
        "gateway_p50_ms": one["gateway"]["p50_ms"],
        "added_p50_ms": one["gateway"]["p50_ms"] - one["direct"]["p50_ms"],
    }
    results["ttft"] = {
        "direct_ms": t_direct * 1000,
        "gateway_ms": t_gw * 1000,
        "added_ms": (t_gw - t_direct) * 1000,
        "samples": n_ttft,
    }
    results["open_streams"] = streams
    results["big_body"] = {
        "direct_ms": big_direct * 1000,
        "gateway_ms": big_gw * 1000,
        "added_ms": (big_gw - big_direct) * 1000,
        "requests": n_big,
    }
    results["gateway_peak_rss_mb"] = rss
    results["raw_upstream"] = raw_results
    print()
    print(report(results))
    print()
    print(relay.report(raw_results, args.connections))
    out = args.json or Path(__file__).parent / "results" / "last.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    errors = sum(r["errors"] for p in pairs for r in (*p.direct, *p.gateway, *p.nginx))
    errors += relay.errors(raw_results)
    return 0 if streams["failed"] == 0 and errors == 0 else 1


def report(r: dict[str, Any]) -> str:
    lines = [
        "| measure | direct | through the gateway | gateway / direct |",
        "|---|---|---|---|",
    ]
    for name, m in r["modes"].items():
        d, g = m["direct"], m["gateway"]
        lines.append(
            f"| {name}: req/s ({r['connections']} connections, median) | {d['rps']:.0f} | "
            f"{g['rps']:.0f} | **{m['ratio']:.2f}** |"
        )
        lines.append(
            f"| {name}: p50 / p99 latency | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms | "
            f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f} ms | |"
        )
        lines.append(
            f"| {name}: CPU per request (server process) | {d['cpu_us_per_req']:.0f} us | "
            f"{g['cpu_us_per_req']:.0f} us | |"
        )
        if "nginx" in m:
            lines.append(
                f"| {name}: nginx proxy_pass req/s (1 worker, upstream keep-alive) | "
                f"{d['rps']:.0f} | {m['nginx']['rps']:.0f} (nginx) | {m['nginx_ratio']:.2f} |"
            )
    o = r["one_connection"]
    lines.append(
        f"| p50 latency at 1 connection | {o['direct_p50_ms']:.2f} ms | "
        f"{o['gateway_p50_ms']:.2f} ms | {o['added_p50_ms']:+.2f} ms |"
    )
    t = r["ttft"]
    lines.append(
        f"| time to first token (median of {t['samples']}) | {t['direct_ms']:.2f} ms | "
        f"{t['gateway_ms']:.2f} ms | {t['added_ms']:+.2f} ms |"
    )
    b = r["big_body"]
    lines.append(
        f"| 1 MB request body (mean of {b['requests']}) | {b['direct_ms']:.1f} ms | "
        f"{b['gateway_ms']:.1f} ms | {b['added_ms']:+.1f} ms |"
    )
    s = r["open_streams"]
    lines.append(
        f"| {s['streams']} concurrent open streams | | {s['completed']} completed, "
        f"{s['failed']} failed, {s['seconds']} s | |"
    )
    lines.append(f"| gateway peak RSS (whole run) | | {r['gateway_peak_rss_mb']:.0f} MB | |")
    return "\n".join(lines)
