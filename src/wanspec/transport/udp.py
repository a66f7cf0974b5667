"""The QUIC server's UDP endpoint: on a wildcard address, answer each peer from the address it
dialled.

Why: a UDP socket bound to ``0.0.0.0`` (or ``::``) sends from the address the kernel picks for
the route back, usually the host's primary one.  A controller that dialled another address of the
worker (a secondary IP, another interface, 127.0.0.2) gets answers from an address it never
dialled; its QUIC stack ignores them and reports "no answer".  TCP does not have the problem (an
accepted socket is bound to the dialled address).  So on a wildcard bind the endpoint reads each
datagram with its destination address (``IP_PKTINFO`` / ``IPV6_PKTINFO``) and sends every reply to
that peer from it.  One socket per local address would miss addresses added later and the
127.0.0.0/8 range; this covers both.  Where the socket options are missing (not Linux), the
endpoint is the plain one.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections import OrderedDict
from typing import Any, Callable

# Linux's IP_PKTINFO (Python's socket module names it only from 3.12 on)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8) if sys.platform == "linux" else None
_IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)  # (Linux's values)
_IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)
_ANCILLARY = socket.CMSG_SPACE(20) * 2  # one in_pktinfo (12 B) or in6_pktinfo (20 B), with room
_MAX_DATAGRAM = 65535
_MAX_PEERS = 65536  # remembered reply-from addresses; the oldest peer is forgotten beyond
_READS_PER_WAKEUP = 64


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


async def create_server_endpoint(
    protocol_factory: Callable[[], asyncio.DatagramProtocol], host: str, port: int
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
    """``loop.create_datagram_endpoint(factory, local_addr=(host, port))``, except that on a
    wildcard ``host`` every reply leaves from the address its peer sent to."""
    loop = asyncio.get_running_loop()
    if not is_wildcard(host) or _IP_PKTINFO is None:
        return await loop.create_datagram_endpoint(protocol_factory, local_addr=(host, port))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as asyncio's
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)  # IPv4 (also v4-mapped on a v6 socket)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    protocol = protocol_factory()
    transport = ReplyFromDialledTransport(loop, sock, protocol)
    return transport, protocol


class ReplyFromDialledTransport(asyncio.DatagramTransport):
    """A datagram transport on a wildcard-bound socket that remembers, per peer, the local
    address it last wrote to, and sends to that peer from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.DatagramProtocol) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._reply_from: OrderedDict[Any, list[tuple[int, int, bytes]]] = OrderedDict()
        self._closing = False
        loop.add_reader(sock.fileno(), self._read)
        loop.call_soon(protocol.connection_made, self)

    # ---- receiving -------------------------------------------------------------------------

    def _read(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            source = _reply_source(ancillary)
            if source:
                self._reply_from[addr] = source
                self._reply_from.move_to_end(addr)
                if len(self._reply_from) > _MAX_PEERS:
                    self._reply_from.popitem(last=False)
            self._protocol.datagram_received(data, addr)

    # ---- sending ---------------------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendmsg([data], self._reply_from.get(addr, []), 0, addr)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer drops the datagram, as the network may: QUIC resends
        except OSError as exc:
            self._protocol.error_received(exc)

    # ---- the rest of asyncio.DatagramTransport ---------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._reply_from.clear()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0


def _reply_source(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The control message that makes a reply leave from the address a datagram arrived at."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}: send from addr
            return [(level, kind, bytes(4) + data[8:12] + bytes(4))]
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 20:
            # struct in6_pktinfo {in6_addr addr; unsigned ifindex}: send from addr, same interface
            return [(level, kind, bytes(data[:20]))]
    return []
