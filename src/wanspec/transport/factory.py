"""Pick a transport by name, so the CLI and the runtime depend on one function each way.

TLS for TCP is opt-in (``tls=True``, or implied by ``ca``/``insecure``/``cert`` on the client and
by ``cert``/``key`` on the server); QUIC always runs TLS 1.3 and so always needs a certificate.
Mutual TLS: the server's ``client_ca`` requires a client certificate signed by it, which the
client presents with ``cert``/``key``.
"""

from __future__ import annotations

from pathlib import Path

from wanspec.errors import WanspecError
from wanspec.protocol.codec import DEFAULT_FRAME_TIMEOUT_S, DEFAULT_MAX_FRAME
from wanspec.transport.base import Connection, ConnectionHandler, Server

KINDS = ("tcp", "quic")


def _kind(kind: str) -> str:
    k = kind.strip().lower()
    if k not in KINDS:
        raise WanspecError(f"unknown transport {kind!r} (choose one of: {', '.join(KINDS)})")
    return k


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` -> ``(host, port)``, with errors that show the fix."""
    text = address.strip()
    example = "expected HOST:PORT, e.g. 127.0.0.1:9000 or [::1]:9000"
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise WanspecError(f"bad address {address!r}: {example}")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        if text.count(":") > 1:
            raise WanspecError(
                f"bad address {address!r}: put an IPv6 address in brackets, e.g. [::1]:9000"
            )
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise WanspecError(f"address {address!r} has no port: {example}")
    if not host:
        raise WanspecError(
            f"address {address!r} has no host: {example} (0.0.0.0:PORT listens everywhere)"
        )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise WanspecError(f"bad port {port_text!r} in {address!r}: must be 0-65535")
    return host, int(port_text)


async def connect(
    kind: str,
    address: str,
    *,
    tls: bool = False,
    ca: Path | None = None,
    insecure: bool = False,
    server_name: str | None = None,
    timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    cert: Path | None = None,
    key: Path | None = None,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
) -> Connection:
    """Connect to a worker at ``address`` over ``kind`` ("tcp" or "quic"); ``cert``/``key``: a
    client certificate to present (mutual TLS).  ``frame_timeout``: a frame must cross whole,
    either way, within that many seconds (None: no limit)."""
    k = _kind(kind)
    host, port = parse_address(address)
    if port == 0:
        raise WanspecError(f"cannot connect to port 0 in {address!r}")
    if (cert is None) != (key is None):
        raise WanspecError("a TLS client certificate needs both --cert and --key")
    if k == "quic":
        from wanspec.transport.quic import connect_quic

        return await connect_quic(
            host, port, ca=ca, insecure=insecure, server_name=server_name, timeout=timeout,
            max_frame=max_frame, cert=cert, key=key, frame_timeout=frame_timeout,
        )
    from wanspec.transport.tcp import connect_tcp
    from wanspec.transport.tls import client_ssl_context

    use_tls = tls or ca is not None or insecure or cert is not None
    context = client_ssl_context(ca, insecure=insecure, cert=cert, key=key) if use_tls else None
    return await connect_tcp(
        host, port, ssl=context, timeout=timeout, max_frame=max_frame, server_name=server_name,
        client_cert=cert is not None, frame_timeout=frame_timeout,
    )


async def serve(
    kind: str,
    listen: str,
    handler: ConnectionHandler,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    client_ca: Path | None = None,
    frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
) -> Server:
    """Listen on ``listen`` ("host:port", port 0 = ephemeral) and run ``handler`` per connection;
    with ``client_ca``, only for clients presenting a certificate that CA signed (mutual TLS).

    ``frame_timeout``: a frame must cross whole, either way, within that many seconds of its
    first byte (None: no limit); on QUIC, a TLS handshake must also complete within it."""
    k = _kind(kind)
    host, port = parse_address(listen)
    if (cert is None) != (key is None):
        raise WanspecError("TLS needs both a certificate and its private key (--cert and --key)")
    if client_ca is not None and cert is None:
        raise WanspecError("--client-ca (mutual TLS) needs TLS: give the worker --cert and --key")
    if k == "quic":
        if cert is None or key is None:
            raise WanspecError(
                "QUIC always uses TLS: give a certificate and key (create them with "
                "`wanspec certs DIR`)"
            )
        from wanspec.transport.quic import HANDSHAKE_TIMEOUT_S, serve_quic

        return await serve_quic(host, port, handler, cert=cert, key=key, max_frame=max_frame,
                                client_ca=client_ca, frame_timeout=frame_timeout,
                                handshake_timeout=frame_timeout or HANDSHAKE_TIMEOUT_S)
    from wanspec.transport.tcp import serve_tcp
    from wanspec.transport.tls import server_ssl_context

    context = (server_ssl_context(cert, key, client_ca)
               if cert is not None and key is not None else None)
    return await serve_tcp(host, port, handler, ssl=context, max_frame=max_frame,
                           frame_timeout=frame_timeout)
