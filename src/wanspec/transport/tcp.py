"""TCP (optionally TLS) transport over asyncio streams.

One TCP connection carries the length-prefixed frames of :mod:`wanspec.protocol.codec` in both
directions.  ``TCP_NODELAY`` is set on both ends: drafts and commits are tiny and latency-bound,
and Nagle's algorithm would hold them back for an ACK, i.e. up to a whole RTT.
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
    Server,
)
from wanspec.transport.common import Inbox, Traffic, run_handler

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_CLOSE_GRACE_S = 1.0  # how long close() waits for the TLS shutdown / socket flush


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
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
    ) -> None:
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
                    self._inbox.finish(ConnectionClosed(f"{self.peer} closed the connection"))
                    break
                self.received.bytes += len(data)
                for msg in decoder.feed(data, loop.time()):
                    self.received.messages += 1
                    self._inbox.put(msg, decoder.last_frame_bytes)
                await self._inbox.wait_space()  # the application is behind: stop reading
        except ProtocolError as exc:
            log.warning("closing connection with %s: %s", self.peer, exc)
            self._inbox.finish(ProtocolError(f"{self.peer}: {exc}"))
        except (ConnectionError, OSError, _ssl.SSLError) as exc:
            self._inbox.finish(ConnectionClosed(f"connection to {self.peer} lost: {exc}"))
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
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
) -> TcpConnection:
    """Connect to a wanspec peer; failures raise :class:`ConnectError` with a one-line reason.

    ``server_name`` overrides the name checked against the certificate (default: ``host``);
    ``role`` only names the peer in error messages.
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
        raise ConnectError(
            f"cannot trust {where}: {exc.verify_message} (is the CA the one that signed its "
            "certificate, and is the name you dial in that certificate?)"
        ) from exc
    except _ssl.SSLError as exc:
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
                         frame_timeout=frame_timeout)


class TcpServer(Server):
    """Accepts connections and runs the handler on each; closes the connection when it returns."""

    def __init__(self, handler: ConnectionHandler, *, max_frame: int,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S) -> None:
        self._handler = handler
        self._max_frame = max_frame
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
        conn = TcpConnection(reader, writer, max_frame=self._max_frame,
                             frame_timeout=self._frame_timeout)
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(conn)
        self._tasks.add(task)
        try:
            await run_handler(self._handler, conn)
        except asyncio.CancelledError:
            # only close() cancels this task; ending it normally matters because Python 3.11's
            # start_server callback calls task.exception() on it, which raises if cancelled
            pass
        finally:
            self._connections.discard(conn)
            self._tasks.discard(task)
            await conn.close()

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
    server = TcpServer(handler, max_frame=max_frame, frame_timeout=frame_timeout)
    try:
        server._server = await asyncio.start_server(server._on_client, host, port, ssl=ssl)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot listen on {format_address(host, port)}: {reason}") from exc
    return server
