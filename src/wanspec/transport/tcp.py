"""TCP (optionally TLS) transport over asyncio streams.

One TCP connection carries the length-prefixed frames of :mod:`wanspec.protocol.codec` in both
directions.  ``TCP_NODELAY`` is set on both ends: drafts and commits are tiny and latency-bound,
and Nagle's algorithm would hold them back for an ACK, i.e. up to a whole RTT.

A TLS server runs each handshake itself (``start_tls`` on the accepted stream) rather than
leaving it to ``asyncio.start_server``, which drops failed handshakes silently: a client refused
for its certificate (mutual TLS) is logged with the reason, and every handshake has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl

from wanspec.protocol.codec import (
    DEFAULT_FRAME_TIMEOUT_S,
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from wanspec.protocol.messages import Message
from wanspec.transport.base import (
    ConnectError,
    Connection,
    ConnectionClosed,
    ConnectionHandler,
    PeerRefused,
    Server,
)
from wanspec.transport.common import Inbox, Traffic, run_handler
from wanspec.transport.tls import NO_CLIENT_CERT, name_not_covered, untrusted_client_cert

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH_CODES = (62, 64)

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_CLOSE_GRACE_S = 1.0  # how long close() waits for the TLS shutdown / socket flush
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a TLS client that has not completed its handshake is dropped

# TLS alerts by which a server refuses the client's certificate (in TLS 1.3 they arrive after
# the client's side of the handshake completed, i.e. on the first read)
_CLIENT_CERT_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "TLSV1_ALERT_ACCESS_DENIED",
}


def client_cert_refusal(exc: BaseException, peer: str) -> str | None:
    """If ``exc`` is the server's TLS alert refusing our client certificate, say so in words."""
    reason = getattr(exc, "reason", None)
    if not isinstance(exc, _ssl.SSLError) or not isinstance(reason, str):
        return None
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        return f"{peer} requires a TLS client certificate (give this side --cert and --key)"
    if reason in _CLIENT_CERT_ALERTS:
        return (f"{peer} refused this side's TLS client certificate ({reason.lower()}): it must "
                f"be signed by the CA that {peer} trusts (its --client-ca)")
    return None


def _server_tls_failure(exc: BaseException) -> str:
    """Why a client's TLS handshake failed at the server, in words its operator can act on."""
    if isinstance(exc, _ssl.SSLCertVerificationError):
        return untrusted_client_cert(str(exc.verify_message))
    reason = getattr(exc, "reason", None) if isinstance(exc, _ssl.SSLError) else None
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return NO_CLIENT_CERT
    if reason in _PLAIN_TCP_REASONS:
        return "a client spoke plain TCP to this TLS port (a controller without --tls?)"
    words = str(exc).strip("() ")  # an SSLError without arguments prints as "()"
    return f"TLS handshake failed: {reason or words or type(exc).__name__}"


# what OpenSSL says when the first bytes are not a TLS record: plain TCP (our protocol's frames)
# or HTTP sent to a TLS port
_PLAIN_TCP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"})


class _PausedStreamProtocol(asyncio.StreamReaderProtocol):
    """A server stream that reads nothing until ``start_tls`` takes over, so the client's first
    TLS bytes reach TLS, not the plain stream's buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        super().connection_made(transport)


def format_address(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals so the result parses back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpConnection(Connection):
    """A framed message connection on an asyncio stream pair.

    A background task reads and decodes; ``recv()`` drains what it decoded.  A peer that breaks
    the protocol (garbage, an oversize frame) gets the connection closed, and ``recv()`` raises
    the :class:`ProtocolError` after the valid messages that preceded it.

    What a peer can make us hold is bounded: one frame being received (``max_frame`` bytes, and
    it must be whole within ``frame_timeout`` seconds of its first byte), the decoded messages
    not yet taken by ``recv()`` (the reader stops reading while the inbox is full: TCP's flow
    control then holds the peer back), and what we send (a peer that does not read what we send
    for ``frame_timeout`` seconds is dropped).  ``frame_timeout=None`` lifts the time limits.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        peer: str | None = None,
        tls_client_cert: bool | None = None,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
        client: bool = False,
    ) -> None:
        """``tls_client_cert``: on a TLS client, whether it presented a certificate (None: not
        a TLS client); with ``client`` (this side dialled), it only words the error when the
        server hangs up without a word."""
        self._tls_client_cert = tls_client_cert
        self._client = client
        if peer is None:
            name = writer.get_extra_info("peername")
            peer = format_address(str(name[0]), int(name[1])) if name else "?"
        self.peer = peer
        self.sent = Traffic()
        self.received = Traffic()
        self._reader = reader
        self._writer = writer
        self._max_frame = max_frame
        self._frame_timeout = frame_timeout
        self._decoder = FrameDecoder(max_frame, frame_timeout)
        self._inbox: Inbox[Message] = Inbox(max_bytes=max_frame)
        self._closed = False
        _set_nodelay(writer)
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, msg: Message) -> None:
        if self._closed or self._writer.is_closing():
            self._closed = True
            raise ConnectionClosed(f"connection to {self.peer} is closed")
        frame = encode_frame(msg, self._max_frame)
        try:
            self._writer.write(frame)
            await asyncio.wait_for(self._writer.drain(), self._frame_timeout)
        except TimeoutError as exc:  # the peer does not read: what we send would pile up here
            self._shutdown()
            raise ConnectionClosed(f"{self.peer} has not read what was sent to it for "
                                   f"{self._frame_timeout:g} s") from exc
        except (ConnectionError, OSError) as exc:
            self._shutdown()
            raise ConnectionClosed(f"connection to {self.peer} lost: {exc}") from exc
        self.sent.add(len(frame))

    async def recv(self) -> Message:
        return await self._inbox.get()

    async def close(self) -> None:
        self._inbox.abort(ConnectionClosed(f"connection to {self.peer} closed"))
        self._shutdown()
        self._read_task.cancel()
        await asyncio.wait([self._read_task])  # unlike awaiting it, never swallows our own cancel
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), _CLOSE_GRACE_S)

    def _shutdown(self) -> None:
        """Stop sending and close the socket (buffered output is still flushed)."""
        self._closed = True
        if not self._writer.is_closing():
            self._writer.close()

    def _silent_refusal(self) -> PeerRefused | None:
        """A TLS server that hangs up before sending a byte most likely refused our client
        certificate (or our lack of one): asyncio servers drop the TLS alert that would say so.
        One that hangs up on a plain-TCP client most likely serves TLS."""
        if not self._client or self.received.bytes:
            return None
        if self._tls_client_cert is None:
            return PeerRefused(f"{self.peer} closed the connection before sending anything (if "
                               "the worker serves TLS, add --tls and --ca)")
        if self._tls_client_cert:
            guess = "have refused this side's TLS client certificate"
        else:
            guess = "require a TLS client certificate: give this side --cert and --key"
        return PeerRefused(f"{self.peer} closed the connection before sending anything; its log "
                           f"says why (it may {guess})")

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        decoder = self._decoder
        try:
            while True:
                deadline = decoder.deadline  # a frame is half in: it must be whole by then
                try:
                    data = await asyncio.wait_for(
                        self._reader.read(_READ_CHUNK),
                        None if deadline is None else max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    assert deadline is not None
                    decoder.check_deadline(max(loop.time(), deadline))  # raises ProtocolError
                    continue
                if not data:
                    self._inbox.finish(self._silent_refusal() or
                                       ConnectionClosed(f"{self.peer} closed the connection"))
                    break
                self.received.bytes += len(data)
                for msg in decoder.feed(data, loop.time()):
                    self.received.messages += 1
                    self._inbox.put(msg, decoder.last_frame_bytes)
                await self._inbox.wait_space()  # the application is behind: stop reading
        except ProtocolError as exc:
            # (the connection's owner reports it, with what it means for its work)
            log.info("closing connection with %s: %s", self.peer, exc)
            self._inbox.finish(ProtocolError(f"{self.peer}: {exc}"))
        except (ConnectionError, OSError, _ssl.SSLError) as exc:
            refusal = client_cert_refusal(exc, self.peer)
            self._inbox.finish(PeerRefused(refusal) if refusal is not None else
                               self._silent_refusal() or
                               ConnectionClosed(f"connection to {self.peer} lost: {exc}"))
        finally:
            # whatever ended the read side ends the connection: our protocol has no half-close
            self._inbox.finish(ConnectionClosed(f"connection to {self.peer} closed"))
            self._shutdown()


async def connect_tcp(
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    server_name: str | None = None,
    role: str = "worker",
    client_cert: bool = False,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
) -> TcpConnection:
    """Connect to a wanspec peer; failures raise :class:`ConnectError` with a one-line reason.

    ``server_name`` overrides the name checked against the certificate (default: ``host``);
    ``role`` only names the peer in error messages; ``client_cert``: whether ``ssl`` presents a
    client certificate (it only words errors).
    """
    where = f"{role} at {format_address(host, port)}"
    kwargs: dict[str, object] = {}
    if ssl is not None:
        kwargs["ssl"] = ssl
        kwargs["server_hostname"] = server_name or host
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, **kwargs), timeout  # type: ignore[arg-type]
        )
    except TimeoutError as exc:
        raise ConnectError(f"cannot reach {where}: no answer within {timeout:g} s") from exc
    except _ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _NAME_MISMATCH_CODES:
            raise ConnectError(name_not_covered(where, server_name or host)) from exc
        raise ConnectError(
            f"cannot trust {where}: {exc.verify_message} (is the CA the one that signed its "
            "certificate, and is the name you dial in that certificate?)"
        ) from exc
    except _ssl.SSLError as exc:
        refusal = client_cert_refusal(exc, where)
        if refusal is not None:
            raise ConnectError(refusal) from exc
        raise ConnectError(
            f"TLS handshake with {where} failed: {exc.reason or exc} (does it serve TLS?)"
        ) from exc
    except ConnectionRefusedError as exc:
        raise ConnectError(f"cannot reach {where}: connection refused") from exc
    except (ConnectionResetError, ConnectionAbortedError) as exc:
        if ssl is None:
            raise ConnectError(f"cannot reach {where}: connection reset") from exc
        raise ConnectError(
            f"TLS handshake with {where} failed: connection reset (does it serve TLS?)"
        ) from exc
    except socket.gaierror as exc:
        raise ConnectError(f"cannot reach {where}: unknown host ({exc.strerror})") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        raise ConnectError(f"cannot reach {where}: {reason}") from exc
    return TcpConnection(reader, writer, max_frame=max_frame, peer=format_address(host, port),
                         tls_client_cert=client_cert if ssl is not None else None,
                         frame_timeout=frame_timeout, client=True)


class TcpServer(Server):
    """Accepts connections and runs the handler on each; closes the connection when it returns."""

    def __init__(self, handler: ConnectionHandler, *, max_frame: int,
                 ssl: _ssl.SSLContext | None = None,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S) -> None:
        self._handler = handler
        self._max_frame = max_frame
        self._ssl = ssl
        self._frame_timeout = frame_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[TcpConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None and self._server.sockets
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn: TcpConnection | None = None
        try:
            if self._ssl is not None and not await self._tls_handshake(writer):
                return
            conn = TcpConnection(reader, writer, max_frame=self._max_frame,
                                 frame_timeout=self._frame_timeout)
            self._connections.add(conn)
            await run_handler(self._handler, conn)
        except asyncio.CancelledError:
            # only close() cancels this task; ending it normally matters because Python 3.11's
            # start_server callback calls task.exception() on it, which raises if cancelled
            pass
        finally:
            self._tasks.discard(task)
            if conn is not None:
                self._connections.discard(conn)
                await conn.close()
            elif not writer.is_closing():
                writer.transport.abort()

    async def _tls_handshake(self, writer: asyncio.StreamWriter) -> bool:
        """Upgrade an accepted stream to TLS; False (logged with the reason) if that failed."""
        assert self._ssl is not None
        name = writer.get_extra_info("peername")
        peer = format_address(str(name[0]), int(name[1])) if name else "?"
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        except (ConnectionError, OSError, _ssl.SSLError) as exc:
            log.warning("refusing a TLS connection from %s: %s", peer, _server_tls_failure(exc))
            return False
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._connections):
            await conn.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_GRACE_S)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), _CLOSE_GRACE_S)


async def serve_tcp(
    host: str,
    port: int,
    handler: ConnectionHandler,
    *,
    ssl: _ssl.SSLContext | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
) -> TcpServer:
    """Listen on ``host:port`` (port 0 = ephemeral, see ``.address``) and serve each connection."""
    server = TcpServer(handler, max_frame=max_frame, ssl=ssl, frame_timeout=frame_timeout)
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=_READ_CHUNK, loop=loop)
        cls = asyncio.StreamReaderProtocol if ssl is None else _PausedStreamProtocol
        return cls(reader, server._on_client, loop=loop)

    try:
        server._server = await loop.create_server(protocol, host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot listen on {format_address(host, port)}: {reason}") from exc
    return server
