"""Authentication between the sites over real sockets on loopback: TCP, TCP+TLS and QUIC.

Every case runs a real worker (``WorkerService`` behind ``factory.serve``) and a real controller
(``WorkerLink`` + ``RemoteEngine`` through ``factory.connect``).  A refused controller still
finishes its request by itself with the target's output; what is checked is who was served, and
that each site said why in one line.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from remote_support import PROMPT, config, real

from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import Error, Hello, SessionStart
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.transport import factory
from wanspec.transport.base import ConnectionClosed
from wanspec.transport.certs import CertPaths, create_certs

KEY = b"correct horse battery staple, 32"
WRONG_KEY = b"incorrect horse battery staple!!"
TRANSPORTS = ["tcp", "tcp+tls", "quic"]
TLS_TRANSPORTS = ["tcp+tls", "quic"]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return create_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """Another CA, with a client certificate the worker must not accept."""
    return create_certs(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture(scope="module")
def drafter(near_draft):
    lm = near_draft.sibling("auth-worker")
    yield lm
    lm.close()


def kind_of(transport: str) -> str:
    return transport.split("+")[0]


async def serve(transport: str, service: WorkerService, certs: CertPaths,
                client_ca: Path | None = None):
    tls = transport != "tcp"
    return await factory.serve(kind_of(transport), "127.0.0.1:0", service.handle,
                               cert=certs.cert if tls else None, key=certs.key if tls else None,
                               client_ca=client_ca)


def make_engine(target, transport: str, address: str, certs: CertPaths, *,
                key: bytes | None = None, client: tuple[Path, Path] | None = None):
    tls = transport != "tcp"
    cert, cert_key = client if client is not None else (None, None)

    async def connector():
        return await factory.connect(kind_of(transport), address, tls=tls,
                                     ca=certs.ca_cert if tls else None, cert=cert, key=cert_key,
                                     timeout=5.0)

    link = WorkerLink(connector, RemoteEngine.hello_for(target), hello_timeout=5.0,
                      auth_key=key)
    return link, RemoteEngine(target, link, config=config("remote"))


async def eventually(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (the other site may still be writing its log line)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def run_case(target, drafter, transport: str, certs: CertPaths, caplog, *,
             worker_key: bytes | None = None, controller_key: bytes | None = None,
             client_ca: Path | None = None, client: tuple[Path, Path] | None = None,
             expect_worker_log: str | None = None):
    """One request from a controller to a worker configured as given; returns the result, the
    controller's last error, the sessions the worker served and the worker-side log lines."""
    caplog.set_level(logging.WARNING)

    async def main():
        service = WorkerService(drafter, auth_key=worker_key)
        server = await serve(transport, service, certs, client_ca)
        link, engine = make_engine(target, transport, f"127.0.0.1:{server.address[1]}", certs,
                                   key=controller_key, client=client)
        try:
            r = await engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            if expect_worker_log is not None:
                await eventually(lambda: expect_worker_log in caplog.text)
            error = link.last_error
        finally:
            await link.close()
        # sessions the worker served (its connections' totals, once the connection has closed):
        # whether any drafts came back before the request ended is up to a busy machine's timing
        await eventually(lambda: service.totals.sessions > 0 or not service.active)
        await server.close()
        return r, error, service.totals.sessions

    r, error, sessions = real(main)
    worker_lines = [rec.getMessage() for rec in caplog.records
                    if rec.name.startswith(("wanspec.worker", "wanspec.transport"))]
    return r, error, sessions, worker_lines


def assert_served(r, error, sessions, ref):
    assert r.token_ids == ref.token_ids
    assert r.metrics["worker_used"] is True and error is None
    assert sessions == 1  # the worker started the request's session


def assert_refused(r, error, sessions, ref):
    assert r.token_ids == ref.token_ids  # the controller went on by itself
    assert r.metrics["worker_used"] is False and sessions == 0
    assert error is not None and "\n" not in error and "Traceback" not in error


# ---- pre-shared key -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_right_key_is_served(transport, target, drafter, certs, caplog, ref_measured):
    r, error, sessions, _ = run_case(target, drafter, transport, certs, caplog,
                                   worker_key=KEY, controller_key=KEY)
    assert_served(r, error, sessions, ref_measured)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_key_is_refused_with_a_reason_at_both_sites(transport, target, drafter, certs,
                                                           caplog, ref_measured):
    words = "authentication failed: the worker's key does not match the controller's"
    r, error, sessions, worker_lines = run_case(
        target, drafter, transport, certs, caplog, worker_key=KEY, controller_key=WRONG_KEY,
        expect_worker_log=f"controller refused the connection: {words}")
    assert_refused(r, error, sessions, ref_measured)
    assert error.startswith(words)
    assert any(f"controller refused the connection: {words}" in line for line in worker_lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_controller_without_the_key_is_refused(transport, target, drafter, certs, caplog,
                                                 ref_measured):
    words = "the worker requires a pre-shared key and the controller has none"
    r, error, sessions, worker_lines = run_case(
        target, drafter, transport, certs, caplog, worker_key=KEY, controller_key=None,
        expect_worker_log=words)
    assert_refused(r, error, sessions, ref_measured)
    assert error.startswith(f"worker refused the connection: authentication failed: {words}")
    assert "--auth-key-file" in error
    assert any(f"refusing the controller: authentication failed: {words}" in line
               for line in worker_lines)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_skipping_the_proof_gets_no_session(transport, drafter, certs):
    """A hand-written client that answers the worker's challenge with a SessionStart."""
    async def main():
        service = WorkerService(drafter, auth_key=KEY)
        server = await serve(transport, service, certs)
        tls = transport != "tcp"
        conn = await factory.connect(kind_of(transport), f"127.0.0.1:{server.address[1]}",
                                     tls=tls, ca=certs.ca_cert if tls else None, timeout=5.0)
        received = []
        try:
            await conn.send(Hello(PROTOCOL_VERSION, "controller", "x", service.fingerprint,
                                  drafter.vocab_size, nonce=b"\x07" * 32))
            await conn.send(SessionStart(rid=1, prompt=(1, 2, 3)))
            while True:
                received.append(await asyncio.wait_for(conn.recv(), 5.0))
        except ConnectionClosed:
            pass
        finally:
            await conn.close()
            await server.close()
        return received, service.device.stats.passes, service.totals.sessions

    received, passes, sessions = real(main)
    assert [type(m).__name__ for m in received] == ["Hello", "Auth", "Error"]
    assert received[-1].code == "auth" and "before proving its key" in received[-1].message
    assert isinstance(received[-1], Error) and passes == 0 and sessions == 0


# ---- mutual TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TLS_TRANSPORTS)
def test_a_client_certificate_from_the_workers_ca_is_served(transport, target, drafter, certs,
                                                            caplog, ref_measured):
    r, error, sessions, _ = run_case(target, drafter, transport, certs, caplog,
                                   client_ca=certs.ca_cert,
                                   client=(certs.client_cert, certs.client_key))
    assert_served(r, error, sessions, ref_measured)


@pytest.mark.parametrize("transport", TLS_TRANSPORTS)
def test_a_client_certificate_from_another_ca_is_refused(transport, target, drafter, certs,
                                                         other_certs, caplog, ref_measured):
    words = "the TLS client certificate is not trusted"
    r, error, sessions, worker_lines = run_case(
        target, drafter, transport, certs, caplog, client_ca=certs.ca_cert,
        client=(other_certs.client_cert, other_certs.client_key), expect_worker_log=words)
    assert_refused(r, error, sessions, ref_measured)
    assert error.startswith("worker refused the connection:") and "client certificate" in error
    assert any("refusing a" in line and words in line and "--client-ca" in line
               for line in worker_lines)


@pytest.mark.parametrize("transport", TLS_TRANSPORTS)
def test_a_controller_without_a_client_certificate_is_refused(transport, target, drafter, certs,
                                                              caplog, ref_measured):
    words = "no TLS client certificate was presented"
    r, error, sessions, worker_lines = run_case(
        target, drafter, transport, certs, caplog, client_ca=certs.ca_cert,
        expect_worker_log=words)
    assert_refused(r, error, sessions, ref_measured)
    assert "client certificate" in error and "--cert and --key" in error
    assert any(words in line for line in worker_lines)


@pytest.mark.parametrize("transport", TLS_TRANSPORTS)
def test_the_workers_own_server_certificate_is_no_client_certificate(transport, target, drafter,
                                                                     certs, caplog, ref_measured):
    r, error, sessions, _ = run_case(target, drafter, transport, certs, caplog,
                                   client_ca=certs.ca_cert, client=(certs.cert, certs.key),
                                   expect_worker_log="not trusted")
    assert_refused(r, error, sessions, ref_measured)


def test_mutual_tls_and_a_key_together_are_served_over_quic(target, drafter, certs, caplog,
                                                           ref_measured):
    r, error, sessions, _ = run_case(target, drafter, "quic", certs, caplog, worker_key=KEY,
                                   controller_key=KEY, client_ca=certs.ca_cert,
                                   client=(certs.client_cert, certs.client_key))
    assert_served(r, error, sessions, ref_measured)


# ---- in-process deployments ---------------------------------------------------------------------


def test_a_key_costs_no_round_trip_on_an_emulated_wan(target, near_draft):
    """The worker's proof travels with its Hello and the controller's ahead of its first
    SessionStart: on a virtual clock an authenticated deployment is exactly as fast."""
    from remote_support import TIMING, virtual

    from wanspec.runtime.inproc import InprocDeployment
    from wanspec.transport.inproc import LinkParams

    def run(key):
        async def main():
            async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=80),
                                        timing=TIMING, config=config("remote"),
                                        local_draft=False, auth_key=key) as dep:
                r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
                return r, dep.link.last_error
        return virtual(main)

    (plain, _), (authed, error) = run(None), run(KEY)
    assert error is None and authed.metrics["worker_used"] is True
    assert authed.token_ids == plain.token_ids
    for name in ("queued_s", "ttft_s", "wall_s"):  # queued_s: connecting and the handshake
        assert authed.metrics[name] == plain.metrics[name], name
    assert plain.metrics["queued_s"] == pytest.approx(0.08)  # one round trip, both ways
