"""``wanspec probe``: how far is a site, and is it close enough to draft for this one?

The measurement study of the WANSpec paper as a tool.  For each target, from here:

* ``HOST:PORT``: N TCP connects (SYN to SYN-ACK: one round trip, plus the peer's accept), or with
  ``--transport quic`` N QUIC handshakes with a wanspec worker (ALPN ``wanspec/1``: one round
  trip plus TLS 1.3 crypto at both ends, so a little above the network RTT);
* ``http(s)://`` URL: N TCP connects to its host and N small streamed completions (TTFT).

The name is resolved once before timing, so DNS never counts.  Then the simulator (the real
controller and worker state machines on synthetic models, default settings: a 70B-class target
at 30 ms a pass, a 1B-class draft at 4 ms, per-token acceptance 0.8) predicts what remote
drafting with the default ``adaptive`` policy would give at each target's median RTT, against
best SD at the busy site alone; a target is *close enough* when it saves at least
``min_saving`` of the busy site's draft passes within the ``max_slowdown`` latency budget.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import httpx

from wanspec.bench.openai import Endpoint, RequestOptions, resolve_endpoint, stream_request
from wanspec.core.metrics import percentile
from wanspec.errors import WanspecError

TRANSPORTS = ("tcp", "quic")


@dataclass(frozen=True)
class Target:
    text: str  # as given
    kind: str  # "tcp", "quic" or "http"
    host: str
    port: int
    endpoint: Endpoint | None = None  # http targets


def parse_target(text: str, transport: str = "tcp", chat: bool = False) -> Target:
    """``HOST:PORT`` (probed over ``transport``) or an ``http(s)://`` URL, with one-line errors."""
    if "://" in text:
        endpoint = resolve_endpoint(text, chat, what="target")
        parts = urlsplit(endpoint.api_base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return Target(text, "http", parts.hostname or "", port, endpoint)
    from wanspec.transport.factory import parse_address

    host, port = parse_address(text)
    if port == 0:
        raise WanspecError(f"cannot probe port 0 in {text!r}")
    return Target(text, transport, host, port)


@dataclass(frozen=True)
class ProbeConfig:
    count: int = 10
    interval_s: float = 0.1  # between two samples of one target
    timeout_s: float = 5.0
    ca: Path | None = None  # QUIC: the CA that signed the worker's certificate
    insecure: bool = False  # QUIC: do not verify the worker's certificate
    cert: Path | None = None  # QUIC: a client certificate to present (a worker with --client-ca)
    key: Path | None = None  # QUIC: its private key
    # http targets: a small streamed completion per sample
    model: str | None = None
    api_key: str | None = None
    max_tokens: int = 8
    prompt: str = "Hello"
    # the recommendation
    max_slowdown: float = 1.05
    min_saving: float = 0.5


async def _resolve(host: str, port: int, kind: int) -> tuple[int, Any]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=kind)
    except socket.gaierror as exc:
        raise OSError(f"unknown host {host!r} ({exc.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


async def tcp_connect_s(family: int, sockaddr: Any, timeout_s: float) -> float:
    """Seconds for one TCP connect (the three-way handshake as the client sees it)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout_s)
        return time.perf_counter() - t0
    finally:
        sock.close()


async def quic_handshake_s(host: str, ip: str, port: int, cfg: ProbeConfig) -> float:
    """Seconds for one QUIC handshake with a wanspec worker (to HandshakeCompleted)."""
    from wanspec.transport.quic import connect_quic

    t0 = time.perf_counter()
    conn = await connect_quic(ip, port, ca=cfg.ca, insecure=cfg.insecure, server_name=host,
                              timeout=cfg.timeout_s, cert=cfg.cert, key=cfg.key)
    elapsed = time.perf_counter() - t0
    await conn.close()
    return elapsed


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # "Connection refused", not asyncio's wrapper text
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join((text or type(exc).__name__).split())


def _quantiles(samples: list[float]) -> dict[str, Any] | None:
    """p50/p95/min in ms of samples in seconds (None without any)."""
    if not samples:
        return None
    ms = [1000 * s for s in samples]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "min": min(ms),
            "samples": ms}


async def _rtt_samples(t: Target, cfg: ProbeConfig, errors: Counter[str]) -> list[float]:
    """``cfg.count`` connect (or QUIC handshake) times to ``t``; failures go to ``errors``."""
    kind = socket.SOCK_DGRAM if t.kind == "quic" else socket.SOCK_STREAM
    try:
        family, sockaddr = await asyncio.wait_for(_resolve(t.host, t.port, kind), cfg.timeout_s)
    except (OSError, TimeoutError) as exc:
        errors[f"cannot resolve: {_why(exc)}"] += cfg.count
        return []
    rtts: list[float] = []
    for i in range(cfg.count):
        if i:
            await asyncio.sleep(cfg.interval_s)
        try:
            if t.kind == "quic":
                rtts.append(await quic_handshake_s(t.host, sockaddr[0], t.port, cfg))
            else:
                rtts.append(await tcp_connect_s(family, sockaddr, cfg.timeout_s))
        except (OSError, TimeoutError, WanspecError) as exc:
            errors[f"connect: {_why(exc)}"] += 1
    return rtts


async def probe_target(t: Target, cfg: ProbeConfig,
                       client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """Measure one target: RTT samples (and TTFT for a URL); failures are counted, not raised."""
    ttfts: list[float] = []
    errors: Counter[str] = Counter()
    rtts = await _rtt_samples(t, cfg, errors)
    model = None
    if t.endpoint is not None and client is not None:
        from wanspec.bench.openai import first_model

        try:
            model = cfg.model or await first_model(client, t.endpoint)
        except WanspecError as exc:
            errors[str(exc)] += cfg.count
        if model is not None:
            opts = RequestOptions(model=model, max_tokens=cfg.max_tokens)
            for i in range(cfg.count):
                if i:
                    await asyncio.sleep(cfg.interval_s)
                rec = await stream_request(client, t.endpoint, opts, cfg.prompt)
                if rec.ok and rec.ttft_s is not None:
                    ttfts.append(rec.ttft_s)
                else:
                    errors[f"completion: {rec.error or 'no output'}"] += 1
    rtt = _quantiles(rtts)
    return {
        "target": t.text, "kind": t.kind, "address": f"{t.host}:{t.port}",
        "samples": cfg.count * (2 if t.endpoint is not None else 1),
        "ok": len(rtts) + len(ttfts),
        "rtt_ms": rtt or {"p50": None, "p95": None, "min": None, "samples": []},
        "rtt_measure": "QUIC handshake" if t.kind == "quic" else "TCP connect",
        "ttft_ms": _quantiles(ttfts) if t.endpoint is not None else None,
        "model": model,
        "errors": dict(errors),
    }


def simulate_gains(rtts_ms: Sequence[float], max_slowdown: float) -> dict[float, dict[str, float]]:
    """The simulator's adaptive policy at each RTT (default settings), against best SD:
    ``{rtt: {"latency_vs_best_sd", "busy_site_draft_passes_vs_best_sd"}}``."""
    from wanspec.simulate.config import PARAMS, SimConfig
    from wanspec.simulate.sweep import Sweep, run_sweep

    values = tuple(sorted(set(rtts_ms)))
    if not values:
        return {}
    records = run_sweep(SimConfig(max_slowdown=max_slowdown), [Sweep(PARAMS["rtt"], values)],
                        ["adaptive"])
    return {r["rtt_ms"]: {"latency_vs_best_sd": r["latency_vs_best_sd"],
                          "busy_site_draft_passes_vs_best_sd":
                              r["busy_site_draft_passes_vs_best_sd"]}
            for r in records if r["mode"] == "adaptive"}


def recommendation(rtt_ms: float, gain: dict[str, float], cfg: ProbeConfig) -> tuple[bool, str]:
    """Whether a site at ``rtt_ms`` is close enough for remote drafting, and the sentence."""
    saving = 1.0 - gain["busy_site_draft_passes_vs_best_sd"]
    latency = gain["latency_vs_best_sd"]
    what = (f"at {rtt_ms:.1f} ms RTT remote drafting saves {100 * saving:.0f}% of busy-site "
            f"draft passes, latency {latency:.2f}x best SD")
    if latency > cfg.max_slowdown:
        return False, f"too far: {what}, over the {cfg.max_slowdown:g}x budget"
    if saving < cfg.min_saving:
        return False, f"too far: {what} (less than the {100 * cfg.min_saving:.0f}% asked)"
    return True, f"close enough: {what}"


def _rounded(rtt_ms: float) -> float:
    return round(rtt_ms, 1)


async def run_probe(targets: Sequence[Target], cfg: ProbeConfig,
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Probe every target in turn (one at a time: probes must not queue behind each other), then
    recommend from one simulator sweep over all the measured RTTs."""
    client: httpx.AsyncClient | None = None
    if any(t.endpoint is not None for t in targets):
        from wanspec.bench.runner import client_for

        client = client_for(cfg.timeout_s, cfg.api_key)
    records = []
    try:
        for t in targets:
            if progress is not None:
                progress(t.text)
            records.append(await probe_target(t, cfg, client))
    finally:
        if client is not None:
            await client.aclose()
    measured = [_rounded(r["rtt_ms"]["p50"]) for r in records if r["rtt_ms"]["p50"] is not None]
    gains = await asyncio.to_thread(simulate_gains, measured, cfg.max_slowdown)
    for r in records:
        p50 = r["rtt_ms"]["p50"]
        if p50 is None:
            first = next(iter(r["errors"]), "no sample")
            r.update(close_enough=False, simulated=None, recommendation=f"unreachable: {first}")
            continue
        gain = gains[_rounded(p50)]
        close, text = recommendation(_rounded(p50), gain, cfg)
        r.update(close_enough=close, simulated={"rtt_ms": _rounded(p50), **gain},
                 recommendation=text)
    return records


def check_probe_config(cfg: ProbeConfig) -> None:
    """Every flag, before any network call (one-line errors)."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise WanspecError(message)

    check(cfg.count >= 1, f"--count must be >= 1, got {cfg.count}")
    check(math.isfinite(cfg.interval_s) and cfg.interval_s >= 0,
          f"--interval must be >= 0, got {cfg.interval_s:g}")
    check(math.isfinite(cfg.timeout_s) and cfg.timeout_s > 0,
          f"--timeout must be > 0, got {cfg.timeout_s:g}")
    check(cfg.max_tokens >= 1, f"--max-tokens must be >= 1, got {cfg.max_tokens}")
    check(cfg.max_slowdown >= 1, f"--max-slowdown must be >= 1, got {cfg.max_slowdown:g}")
    check(0 < cfg.min_saving <= 1, f"--min-saving must be in (0, 1], got {cfg.min_saving:g}")
    from wanspec.transport.tls import check_client_trust, require_file

    check_client_trust(cfg.ca, cfg.insecure)
    if cfg.ca is not None:

        require_file(cfg.ca, "CA certificate")
