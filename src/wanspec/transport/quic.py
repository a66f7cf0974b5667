"""QUIC transport (aioquic): TLS 1.3 always, ALPN ``wanspec/1``, one bidirectional control stream.

Why one stream: every QUIC connection carries exactly one client-initiated bidirectional stream
(stream 0) with the same length-prefixed frames as TCP.  Requests are multiplexed inside it by
``rid``.  Head-of-line blocking across requests is acceptable: drafts are tiny, and the protocol
needs ordered delivery anyway (a draft chain is streamed in order from its base, commits must
follow each other).  What QUIC buys over TCP+TLS here is a 1-RTT handshake, connection IDs that
survive NAT rebinding, and no kernel-level head-of-line blocking tied to one TCP connection.

Lifecycle details:

* The client opens stream 0 with its first message (QUIC cannot open a stream without data), so
  the server's ``send()`` waits until the client has spoken; the controller speaks first anyway
  (its Hello).
* ``close()`` sends FIN on the stream and waits (briefly, ``LINGER_S``) for the peer's FIN, which
  the peer sends automatically on receiving ours: that proves everything we sent was received
  before the CONNECTION_CLOSE that follows discards the connection's state.  A dead peer costs
  ``close()`` at most ``LINGER_S`` plus ``CLOSING_S``.
* What a peer can make us hold is bounded as on TCP: a frame must arrive whole within
  ``frame_timeout`` of its first byte, and since QUIC delivers data whether or not we have
  processed it, a peer that keeps more than ``OVERFLOW_FACTOR`` times the inbox's bound waiting
  (or does not take what we send, leaving over ``OVERFLOW_FACTOR`` frames unacknowledged) is
  dropped.  The server drops a connection whose TLS handshake has not completed within
  ``handshake_timeout``; after it, the application's own Hello deadline applies.
* The client sends a QUIC PING every third of the idle timeout, so a quiet but healthy link stays
  up while a dead peer is detected after ``IDLE_TIMEOUT_S`` without any packet.
* UDP has no "connection refused": an unreachable server is reported when ``timeout`` expires.

Mutual TLS: aioquic's server neither asks for nor checks client certificates, so with
``client_ca`` this module asks for one (aioquic's ``_request_client_certificate`` switch) and
checks it once the handshake completes, before the connection is handed to the server's
handler: the chain up to ``client_ca``, the validity dates and the clientAuth usage (aioquic
itself verifies the client's signature proving it holds the key).  A refused client is closed
with application error ``ERR_CLIENT_CERT`` and the reason, and the server logs it.  Should a
future aioquic lack the private attributes used, no certificate is seen and every client is
refused (it fails closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any, Callable

from aioquic import tls as aioquic_tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from wanspec.protocol.codec import (
    DEFAULT_FRAME_TIMEOUT_S,
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from wanspec.protocol.messages import Message
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from wanspec.errors import WanspecError
from wanspec.transport.base import (
    ConnectError,
    Connection,
    ConnectionClosed,
    ConnectionHandler,
    PeerRefused,
    Server,
)
from wanspec.transport.common import Inbox, Traffic, log, run_handler
from wanspec.transport.tcp import format_address
from wanspec.transport.udp import create_server_endpoint
from wanspec.transport.tls import (
    NO_CLIENT_CERT,
    name_not_covered,
    require_file,
    untrusted_client_cert,
)

ALPN = "wanspec/1"
CONTROL_STREAM = 0  # the first client-initiated bidirectional stream
IDLE_TIMEOUT_S = 60.0
KEEPALIVE_S = IDLE_TIMEOUT_S / 3
LINGER_S = 0.5  # close(): how long to wait for the peer to confirm it got everything
CLOSING_S = 0.5  # close() at the client: how long the UDP socket outlives the CONNECTION_CLOSE
HANDSHAKE_TIMEOUT_S = 10.0  # server: a TLS handshake not complete by then is dropped
OVERFLOW_FACTOR = 4  # a peer keeping this many times the inbox's bound queued is dropped
_ERR_PROTOCOL = 0x1  # application close code: the peer broke the wanspec protocol
ERR_CLIENT_CERT = 0x10  # application close code: the client's certificate was refused


def _addr_text(addr: Any) -> str:
    host, port = str(addr[0]), int(addr[1])
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            host = str(ip.ipv4_mapped)
    return format_address(host, port)


class QuicMessageConnection(Connection):
    """Protocol messages over the control stream of one QUIC connection."""

    def __init__(self, protocol: "_Protocol", quic: QuicConnection, *, max_frame: int,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S) -> None:
        self.peer = "?"
        self.sent = Traffic()
        self.received = Traffic()
        self._protocol = protocol
        self._quic = quic  # the protocol's connection, handed to us (not read from its ``_quic``)
        self._is_client = quic.configuration.is_client
        self._max_frame = max_frame
        self._decoder = FrameDecoder(max_frame, frame_timeout)
        self._inbox: Inbox[Message] = Inbox(max_bytes=max_frame)
        self._frame_timer: asyncio.TimerHandle | None = None
        self._closed = False  # no more sending
        self._fin_sent = False
        self._peer_fin = asyncio.Event()
        self._stream_ready = asyncio.Event()  # the control stream exists (or never will)
        self._terminated = asyncio.Event()
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_reason = ""
        self.udp_transport: asyncio.DatagramTransport | None = None  # client only: ours to close
        self._keepalive: asyncio.TimerHandle | None = None
        if self._is_client:
            self._stream_ready.set()

    @property
    def quic(self) -> QuicConnection:
        """The aioquic connection this runs on (its TLS state is checked for mutual TLS)."""
        return self._quic

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, msg: Message) -> None:
        if self._closed:
            raise ConnectionClosed(f"QUIC connection to {self.peer} is closed")
        frame = encode_frame(msg, self._max_frame)
        if not self._stream_ready.is_set():
            await self._stream_ready.wait()  # the server may only answer on the client's stream
            if self._closed:
                raise ConnectionClosed(f"QUIC connection to {self.peer} is closed")
        if self._unacked() > OVERFLOW_FACTOR * self._max_frame:
            # the peer does not take what we send (no flow-control credit, no ACKs): aioquic
            # would buffer without end
            self._fail(ProtocolError(f"{self.peer} does not take what is sent to it"))
            raise ConnectionClosed(f"QUIC connection to {self.peer}: the peer does not read")
        try:
            self._quic.send_stream_data(CONTROL_STREAM, frame)
        except ValueError as exc:  # stream finished underneath us
            self._closed = True
            raise ConnectionClosed(f"QUIC connection to {self.peer} is closed") from exc
        self._protocol.transmit()
        self.sent.add(len(frame))

    def _unacked(self) -> int:
        """Bytes of the control stream aioquic still holds for the peer (0 if it cannot say)."""
        stream = getattr(self._quic, "_streams", {}).get(CONTROL_STREAM)
        buffer = getattr(getattr(stream, "sender", None), "_buffer", b"")
        return len(buffer)

    async def recv(self) -> Message:
        return await self._inbox.get()

    async def close(self) -> None:
        self._closed = True  # before the FIN: nothing may be written after it
        self._inbox.abort(ConnectionClosed(f"QUIC connection to {self.peer} closed"))
        if not self._terminated.is_set():
            if self._send_fin():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._peer_fin.wait(), LINGER_S)
            self.abort("closed")
            if self._is_client:  # wait out the closing period so the UDP socket goes last
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._terminated.wait(), CLOSING_S)
        self._release(final=True)

    def abort(self, reason: str = "closed", error_code: int = 0) -> None:
        """Close the QUIC connection now (CONNECTION_CLOSE), without waiting for the peer."""
        self._closed = True
        self._stream_ready.set()
        if not self._terminated.is_set():
            self._protocol.close(error_code=error_code, reason_phrase=reason)

    # ---- called from the protocol's event dispatch --------------------------------------------

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        if event.alpn_protocol != ALPN:
            self.abort(f"expected ALPN {ALPN}", _ERR_PROTOCOL)
            return
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._is_client:
            self._arm_keepalive()

    def _on_data(self, event: events.StreamDataReceived) -> None:
        if event.stream_id != CONTROL_STREAM:
            self._fail(ProtocolError(f"peer opened unexpected QUIC stream {event.stream_id}"))
            return
        self._stream_ready.set()
        if event.data:
            self.received.bytes += len(event.data)
            decoder, inbox = self._decoder, self._inbox
            try:
                for msg in decoder.feed(event.data, asyncio.get_running_loop().time()):
                    self.received.messages += 1
                    inbox.put(msg, decoder.last_frame_bytes)
                if (len(inbox) > OVERFLOW_FACTOR * inbox.max_items
                        or inbox.queued_bytes > OVERFLOW_FACTOR * inbox.max_bytes):
                    raise ProtocolError("peer sends faster than its messages are processed "
                                        f"({len(inbox)} waiting)")
            except ProtocolError as exc:
                self._fail(exc)
                return
            self._arm_frame_timer()
        if event.end_stream:
            self._inbox.finish(ConnectionClosed(f"{self.peer} closed the connection"))
            self._send_fin()  # no half-close in our protocol: confirm and stop sending
            self._closed = True
            self._peer_fin.set()

    def _on_reset(self, event: events.StreamReset) -> None:
        self._inbox.finish(ConnectionClosed(f"{self.peer} reset the connection"))
        self.abort("stream reset")
        self._peer_fin.set()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        self.close_reason = event.reason_phrase or f"error code {event.error_code}"
        normal = event.error_code == 0 and event.reason_phrase in ("", "closed")
        detail = "" if normal else f": {self.close_reason}"
        if (self._is_client and event.error_code == ERR_CLIENT_CERT
                and event.frame_type is None):  # an application close: the server's words
            self._inbox.finish(PeerRefused(f"{self.peer}: {self.close_reason}"))
        else:
            self._inbox.finish(ConnectionClosed(f"QUIC connection to {self.peer} closed{detail}"))
        self._closed = True
        for ev in (self._terminated, self._peer_fin, self._stream_ready):
            ev.set()
        if not self.handshake.done():
            self.handshake.set_exception(ConnectError(self.close_reason))
            self.handshake.exception()  # retrieved: nobody may be waiting any more
        self._release()

    # ---- internals -----------------------------------------------------------------------------

    def _arm_frame_timer(self) -> None:
        """Time the frame held half (if any): it must be whole by the decoder's deadline."""
        deadline = self._decoder.deadline
        if self._frame_timer is not None and (deadline is None
                                              or self._frame_timer.when() != deadline):
            self._frame_timer.cancel()
            self._frame_timer = None
        if deadline is not None and self._frame_timer is None:
            self._frame_timer = asyncio.get_running_loop().call_at(deadline, self._frame_late)

    def _frame_late(self) -> None:
        self._frame_timer = None
        deadline = self._decoder.deadline
        if deadline is None or self._terminated.is_set():
            return
        try:  # (a timer may fire a hair early: as far as the decoder knows, at its deadline)
            self._decoder.check_deadline(max(asyncio.get_running_loop().time(), deadline))
        except ProtocolError as exc:
            self._fail(exc)

    def _fail(self, exc: ProtocolError) -> None:
        # (the connection's owner reports it, with what it means for its work)
        log.info("closing QUIC connection with %s: %s", self.peer, exc)
        self._inbox.finish(ProtocolError(f"{self.peer}: {exc}"))
        self.abort(str(exc)[:200], _ERR_PROTOCOL)

    def _send_fin(self) -> bool:
        """FIN our side of the control stream once; False if there is no stream to finish."""
        if self._fin_sent or not self._stream_ready.is_set() or self._terminated.is_set():
            return self._fin_sent
        if self._is_client and self.sent.messages == 0:
            return False  # never opened: nothing to finish
        self._fin_sent = True
        self._closed = True
        try:
            self._quic.send_stream_data(CONTROL_STREAM, b"", end_stream=True)
        except ValueError:
            return False
        self._protocol.transmit()
        return True

    def _arm_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(KEEPALIVE_S, self._ping)

    def _ping(self) -> None:
        if self._terminated.is_set():
            return
        self._quic.send_ping(0)  # the uid is unused: the ACK itself is what keeps the link up
        self._protocol.transmit()
        self._arm_keepalive()

    def _release(self, final: bool = False) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self.udp_transport is not None and (final or self._terminated.is_set()):
            self.udp_transport.close()
            self.udp_transport = None


class _Protocol(QuicConnectionProtocol):
    """Routes aioquic events to a :class:`QuicMessageConnection`."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
        on_ready: Callable[[QuicMessageConnection], None] | None = None,
    ) -> None:
        super().__init__(quic)
        self.conn = QuicMessageConnection(self, quic, max_frame=max_frame,
                                          frame_timeout=frame_timeout)
        self._on_ready = on_ready

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.conn.peer == "?":
            self.conn.peer = _addr_text(addr)
        super().datagram_received(data, addr)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        conn = self.conn
        if isinstance(event, events.StreamDataReceived):
            conn._on_data(event)
        elif isinstance(event, events.HandshakeCompleted):
            conn._on_handshake(event)
            if self._on_ready is not None and not conn.closed:
                self._on_ready(conn)
        elif isinstance(event, events.StreamReset):
            conn._on_reset(event)
        elif isinstance(event, events.ConnectionTerminated):
            conn._on_terminated(event)


def _load_chain(config: QuicConfiguration, cert: Path, key: Path, what: str) -> None:
    cert = require_file(cert, f"{what} certificate")
    key = require_file(key, f"{what} private key")
    try:
        config.load_cert_chain(str(cert), str(key))
    except (ValueError, TypeError) as exc:
        raise ConnectError(f"cannot load {what} certificate {cert} with key {key}: {exc}") from exc


def _client_config(
    host: str, ca: Path | None, insecure: bool, server_name: str | None,
    cert: Path | None = None, key: Path | None = None,
) -> QuicConfiguration:
    if (cert is None) != (key is None):
        raise WanspecError("a TLS client certificate needs both --cert and --key")
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        idle_timeout=IDLE_TIMEOUT_S,
        server_name=server_name or host,
    )
    if insecure:
        config.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        config.load_verify_locations(cafile=str(require_file(ca, "CA certificate")))
    if cert is not None and key is not None:
        _load_chain(config, cert, key, "TLS client")
    return config


def _load_client_ca(client_ca: Path) -> Path:
    """The client CA file, checked now: a bad file must stop the server, not refuse every client."""
    path = require_file(client_ca, "client CA certificate")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise WanspecError(f"cannot load client CA certificate {path}: {exc}") from exc
    return path


def _request_client_certificate(quic: QuicConnection) -> None:
    """Make this server connection ask the client for a certificate (aioquic creates its TLS
    context only when the first packet arrives, in ``_initialize``)."""
    initialize = quic._initialize

    def init(peer_cid: bytes) -> None:
        initialize(peer_cid)
        quic.tls._request_client_certificate = True

    quic._initialize = init  # type: ignore[method-assign]


def client_cert_problem(quic: QuicConnection, client_ca: Path) -> str | None:
    """Why the client's certificate is refused (None: it is trusted).  Runs once the handshake
    completed, so the client has proved it holds the certificate's private key."""
    cert = getattr(quic.tls, "_peer_certificate", None)
    if cert is None:
        return NO_CLIENT_CERT
    chain = getattr(quic.tls, "_peer_certificate_chain", [])
    try:
        aioquic_tls.verify_certificate(certificate=cert, chain=chain, cafile=str(client_ca))
    except aioquic_tls.Alert as exc:
        return untrusted_client_cert(str(exc) or type(exc).__name__)
    try:  # what OpenSSL checks of a TCP client: its extended key usage, if any, allows clientAuth
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    allowed = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed.intersection(usage):
        return untrusted_client_cert("it is not a certificate for client authentication")
    return None


async def connect_quic(
    host: str,
    port: int,
    *,
    ca: Path | None = None,
    insecure: bool = False,
    server_name: str | None = None,
    timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    role: str = "worker",
    cert: Path | None = None,
    key: Path | None = None,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
) -> QuicMessageConnection:
    """Connect over QUIC, verifying the server against ``ca`` (system store if None), presenting
    ``cert``/``key`` if given (mutual TLS).

    Raises :class:`ConnectError` within ``timeout``: no answer, TLS refusal, ALPN mismatch.  (A
    refused client certificate shows later, as :class:`PeerRefused` from ``recv()``: in TLS 1.3
    the server checks it after the client's side of the handshake is complete.)
    """
    where = f"{role} at {format_address(host, port)}"
    config = _client_config(host, ca, insecure, server_name, cert, key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), timeout
        )
    except TimeoutError as exc:
        raise ConnectError(f"cannot reach {where}: name lookup timed out") from exc
    except socket.gaierror as exc:
        raise ConnectError(f"cannot reach {where}: unknown host ({exc.strerror})") from exc
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(QuicConnection(configuration=config), max_frame=max_frame,
                              frame_timeout=frame_timeout),
            sock=sock,
        )
    except OSError as exc:
        sock.close()
        raise ConnectError(f"cannot reach {where}: {exc.strerror or exc}") from exc
    assert isinstance(protocol, _Protocol)
    conn = protocol.conn
    conn.peer = format_address(host, port)
    conn.udp_transport = transport  # type: ignore[assignment]
    try:
        protocol.connect(addr)
        await asyncio.wait_for(asyncio.shield(conn.handshake), max(0.0, deadline - loop.time()))
    except TimeoutError as exc:
        conn.abort("timeout")
        transport.close()
        raise ConnectError(
            f"cannot reach {where} over QUIC: no answer within {timeout:g} s "
            f"(is it running, and is UDP port {port} open?)"
        ) from exc
    except ConnectError as exc:
        transport.close()
        if "doesn't match" in str(exc):  # aioquic's words for a certificate of other names
            raise ConnectError(name_not_covered(where, server_name or host)) from exc
        raise ConnectError(
            f"QUIC handshake with {where} failed: {exc} "
            "(wrong CA, wrong server name, or not a wanspec QUIC server?)"
        ) from exc
    except BaseException:
        conn.abort("cancelled")
        transport.close()
        raise
    return conn


class QuicServer(Server):
    """Serves each QUIC connection (after its handshake) with the handler."""

    def __init__(self, handler: ConnectionHandler, *, max_frame: int,
                 client_ca: Path | None = None,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        self._handler = handler
        self._max_frame = max_frame
        self._client_ca = client_ca
        self._frame_timeout = frame_timeout
        self._handshake_timeout = handshake_timeout
        self._server: Any = None  # aioquic.asyncio.server.QuicServer
        self._address: tuple[str, int] = ("", 0)
        self._tasks: dict[asyncio.Task[None], QuicMessageConnection] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def _create_protocol(self, quic: QuicConnection, stream_handler: Any = None) -> _Protocol:
        if self._client_ca is not None:
            _request_client_certificate(quic)
        protocol = _Protocol(quic, max_frame=self._max_frame, frame_timeout=self._frame_timeout,
                             on_ready=self._accept)
        conn = protocol.conn

        def too_slow() -> None:  # (aioquic alone would keep it until its idle timeout)
            if not conn.handshake.done():
                log.info("dropping a QUIC peer whose handshake did not complete in %g s",
                         self._handshake_timeout)
                conn.abort("handshake timeout")

        timer = asyncio.get_running_loop().call_later(self._handshake_timeout, too_slow)
        conn.handshake.add_done_callback(lambda _: timer.cancel())
        return protocol

    def _accept(self, conn: QuicMessageConnection) -> None:
        if self._client_ca is not None:
            problem = client_cert_problem(conn.quic, self._client_ca)
            if problem is not None:
                log.warning("refusing a QUIC connection from %s: %s", conn.peer, problem)
                conn.abort(problem[:200], ERR_CLIENT_CERT)
                return
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks[task] = conn
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def _serve(self, conn: QuicMessageConnection) -> None:
        try:
            await run_handler(self._handler, conn)
        finally:
            await conn.close()

    async def close(self) -> None:
        for task, conn in list(self._tasks.items()):
            conn.abort("server shutting down")
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            self._server.close()
            self._server = None


async def serve_quic(
    host: str,
    port: int,
    handler: ConnectionHandler,
    *,
    cert: Path,
    key: Path,
    max_frame: int = DEFAULT_MAX_FRAME,
    client_ca: Path | None = None,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
) -> QuicServer:
    """Listen for QUIC on UDP ``host:port`` (port 0 = ephemeral, see ``.address``); with
    ``client_ca``, serve only clients whose certificate that CA signed (mutual TLS).

    This is ``aioquic.asyncio.serve`` spelled out: ``serve`` keeps the UDP transport in a private
    attribute of the server it returns, and the bound address (port 0) is read from that transport.
    """
    from aioquic.asyncio.server import QuicServer as _AioquicServer

    config = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], idle_timeout=IDLE_TIMEOUT_S
    )
    _load_chain(config, cert, key, "TLS")
    if client_ca is not None:
        client_ca = _load_client_ca(client_ca)
    # (no session tickets are issued, so no client skips the certificate by resuming a session)
    server = QuicServer(handler, max_frame=max_frame, client_ca=client_ca,
                        frame_timeout=frame_timeout, handshake_timeout=handshake_timeout)
    try:
        udp, server._server = await create_server_endpoint(  # replies leave from the dialled address
            lambda: _AioquicServer(configuration=config, create_protocol=server._create_protocol),
            host, port,
        )
    except OSError as exc:
        raise ConnectError(
            f"cannot listen on {format_address(host, port)}/udp: {exc.strerror or exc}"
        ) from exc
    name = udp.get_extra_info("sockname")
    server._address = (str(name[0]), int(name[1]))
    return server
