"""``wanspec probe``: RTT to a TCP listener, a QUIC worker and an OpenAI endpoint, the
simulator's recommendation at the measured RTT, and flags checked before any network call."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
from typer.testing import CliRunner

from bench_fake_server import FakeOpenAI, Reply
from wanspec.bench.probe import (
    ProbeConfig,
    parse_target,
    recommendation,
    run_probe,
    simulate_gains,
)
from wanspec.cli.app import app
from wanspec.errors import WanspecError
from wanspec.transport import factory
from wanspec.transport.certs import create_certs


class Listener:
    """A TCP listener that counts the connections it accepts (in a thread)."""

    def __enter__(self) -> "Listener":
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __exit__(self, *exc: object) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(2)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def probe(*args: str):
    return CliRunner().invoke(app, ["probe", "--interval", "0", *args], catch_exceptions=True,
                              env={"WANSPEC_API_KEY": None, "OPENAI_API_KEY": None})


def test_a_tcp_listener_is_measured_and_recommended():
    with Listener() as lis:
        r = probe(f"127.0.0.1:{lis.port}", "--count", "5", "--json")
        accepted = lis.accepted
    assert r.exit_code == 0, r.output
    [rec] = json.loads(r.stdout)
    assert accepted == 5 and rec["ok"] == rec["samples"] == 5 and rec["errors"] == {}
    rtt = rec["rtt_ms"]
    assert len(rtt["samples"]) == 5 and 0 < rtt["min"] <= rtt["p50"] <= rtt["p95"]
    assert rec["rtt_measure"] == "TCP connect" and rec["ttft_ms"] is None
    sim = rec["simulated"]
    assert sim["rtt_ms"] == round(rtt["p50"], 1)
    # loopback: the simulator has remote drafting save nearly all busy-site draft passes
    assert rec["close_enough"] and rec["recommendation"].startswith("close enough: at ")
    assert sim["busy_site_draft_passes_vs_best_sd"] < 0.5


def test_an_openai_endpoint_gets_ttft_and_connect_rtt_and_a_closed_port_is_unreachable():
    dead = closed_port()
    with FakeOpenAI(reply=lambda i, b: Reply(first_delay_s=0.15, tokens=2)) as srv:
        r = probe(srv.url, f"127.0.0.1:{dead}", "--count", "3", "--max-tokens", "2", "--json")
        posts = srv.completions()
    assert r.exit_code == 1  # one target unreachable
    ok, bad = json.loads(r.stdout)
    assert ok["kind"] == "http" and ok["model"] == "fake-model" and ok["ok"] == 6
    assert len(posts) == 3 and all(p.body["max_tokens"] == 2 for p in posts)
    assert ok["ttft_ms"]["p50"] >= 150 - 5 and ok["ttft_ms"]["p95"] >= ok["ttft_ms"]["p50"]
    assert ok["ttft_ms"]["p50"] > ok["rtt_ms"]["p50"]  # a prefill of 150 ms behind a connect
    assert ok["recommendation"].startswith("close enough")
    assert bad["ok"] == 0 and bad["rtt_ms"]["p50"] is None and not bad["close_enough"]
    assert bad["recommendation"] == "unreachable: connect: Connection refused"
    assert bad["errors"] == {"connect: Connection refused": 3}


def test_the_table_fits_80_columns_and_names_the_recommendation():
    with Listener() as lis:
        r = probe(f"127.0.0.1:{lis.port}", "--count", "2")
    assert r.exit_code == 0, r.output
    tables = [line for line in r.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert tables and max(len(line) for line in tables) <= 80
    assert f"127.0.0.1:{lis.port}: close enough: at " in " ".join(r.stdout.split())


async def handler(conn) -> None:
    """A QUIC server's connection handler that only waits for the client to go."""
    try:
        await conn.recv()
    except Exception:
        pass


def test_quic_handshakes_with_a_wanspec_worker_verified_against_its_ca(tmp_path):
    certs = create_certs(tmp_path / "certs")

    async def main():
        server = await factory.serve("quic", "127.0.0.1:0", handler, cert=certs.cert,
                                     key=certs.key)
        target = parse_target(f"127.0.0.1:{server.address[1]}", "quic")
        try:
            good = await run_probe([target], ProbeConfig(count=2, interval_s=0, ca=certs.ca_cert))
            bad = await run_probe([target], ProbeConfig(count=1, interval_s=0, timeout_s=2))
        finally:
            await server.close()
        return good[0], bad[0]

    good, bad = asyncio.run(asyncio.wait_for(main(), 25))
    assert good["ok"] == 2 and good["rtt_measure"] == "QUIC handshake"
    assert good["rtt_ms"]["p50"] > 0 and good["simulated"] is not None
    # the system store does not know the worker's self-signed CA
    assert bad["ok"] == 0 and bad["recommendation"].startswith("unreachable: connect: QUIC")


def test_quic_probes_a_worker_that_requires_a_client_certificate(tmp_path, caplog):
    """A worker started with --client-ca serves only clients that present a certificate its CA
    signed.  The handshake a probe times completes either way (TLS 1.3 checks the client's
    certificate after it), but without --cert/--key the worker refuses, and logs, every probe."""
    certs = create_certs(tmp_path / "certs")

    async def probe_with(cfg: ProbeConfig):
        server = await factory.serve("quic", "127.0.0.1:0", handler, cert=certs.cert,
                                     key=certs.key, client_ca=certs.ca_cert)
        target = parse_target(f"127.0.0.1:{server.address[1]}", "quic")
        try:
            (record,) = await run_probe([target], cfg)
            await asyncio.sleep(0.2)  # (the worker's verdict on the last one)
        finally:
            await server.close()
        return record

    caplog.set_level("WARNING", logger="wanspec.transport")
    good = asyncio.run(asyncio.wait_for(probe_with(ProbeConfig(
        count=2, interval_s=0, ca=certs.ca_cert, cert=certs.client_cert,
        key=certs.client_key)), 25))
    assert good["ok"] == 2 and good["rtt_measure"] == "QUIC handshake"
    assert "no TLS client certificate" not in caplog.text
    asyncio.run(asyncio.wait_for(probe_with(ProbeConfig(count=1, interval_s=0,
                                                        ca=certs.ca_cert)), 25))
    assert "no TLS client certificate was presented" in caplog.text


def test_the_recommendation_follows_the_simulator_and_the_thresholds():
    gains = simulate_gains([1.0, 150.0], max_slowdown=1.05)
    near, far = gains[1.0], gains[150.0]
    # the further the worker, the more drafting the busy site keeps doing itself
    assert near["busy_site_draft_passes_vs_best_sd"] < far["busy_site_draft_passes_vs_best_sd"]
    cfg = ProbeConfig()
    close, text = recommendation(1.0, near, cfg)
    saved = round(100 * (1 - near["busy_site_draft_passes_vs_best_sd"]))
    assert close and text == (f"close enough: at 1.0 ms RTT remote drafting saves {saved}% of "
                              f"busy-site draft passes, latency "
                              f"{near['latency_vs_best_sd']:.2f}x best SD")
    gain = {"latency_vs_best_sd": 1.0, "busy_site_draft_passes_vs_best_sd": 0.8}
    close, text = recommendation(200.0, gain, cfg)
    assert not close and text.startswith("too far: ") and "saves 20%" in text
    close, text = recommendation(200.0, {**gain, "busy_site_draft_passes_vs_best_sd": 0.1,
                                         "latency_vs_best_sd": 1.2}, cfg)
    assert not close and "over the 1.05x budget" in text
    assert recommendation(200.0, {**gain, "busy_site_draft_passes_vs_best_sd": 0.75},
                          ProbeConfig(min_saving=0.2))[0]


@pytest.mark.parametrize("args, needle", [
    (["127.0.0.1"], "has no port"),
    (["127.0.0.1:0"], "port 0"),
    (["ftp://x"], "invalid target"),
    (["--count", "0"], "--count must be >= 1"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--interval", "soon"], "invalid --interval"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--max-slowdown", "0.9"], "--max-slowdown must be >= 1"),
    (["--min-saving", "0"], "--min-saving must be in (0, 1]"),
    (["--insecure", "--ca", "x.pem"], "not both"),
    (["--transport", "quic", "--ca", "/nonexistent/ca.pem"], "CA certificate not found"),
    (["--ca", "ca.pem"], "--ca applies to --transport quic only"),
    (["--cert", "c.pem", "--key", "k.pem"], "--cert applies to --transport quic only"),
    (["--transport", "quic", "--cert", "c.pem"], "needs both --cert and --key"),
    (["--transport", "quic", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem"],
     "not found"),
    (["--model", "m"], "--model applies to http(s):// targets only"),
    (["--chat"], "--chat applies to http(s):// targets only"),
])
def test_bad_arguments_are_one_line_errors_before_any_probe(args, needle):
    with Listener() as lis:
        r = probe(f"127.0.0.1:{lis.port}", *args)
        assert lis.accepted == 0
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_targets_are_parsed():
    assert parse_target("[::1]:7700").host == "::1"
    t = parse_target("https://example.org/v1")
    assert (t.kind, t.host, t.port) == ("http", "example.org", 443)
    assert parse_target("http://example.org").port == 80
    assert parse_target("w:7700", "quic").kind == "quic"
    with pytest.raises(WanspecError):
        parse_target("w:port")
