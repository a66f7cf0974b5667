"""TLS contexts for the TCP transport, with errors a person can act on.

The worker serves a certificate (usually from ``wanspec certs DIR``); the controller verifies it
against the CA that signed it.  ``insecure`` exists for quick tests on a trusted network only:
it still encrypts but does not authenticate the worker.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from wanspec.errors import WanspecError


def require_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WanspecError(f"{what} not found: {path} (create one with `wanspec certs DIR`)")
    return path


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Server side: present ``cert`` (PEM chain) with its private ``key``; TLS 1.2 at least."""
    cert = require_file(cert, "TLS certificate")
    key = require_file(key, "TLS private key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise WanspecError(
            f"cannot load TLS certificate {cert} with key {key}: {exc} "
            "(do they belong together and are they PEM?)"
        ) from exc
    return ctx


def client_ssl_context(ca: Path | None, *, insecure: bool = False) -> ssl.SSLContext:
    """Client side: trust ``ca`` (system store if None); ``insecure`` skips verification."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        ca = require_file(ca, "CA certificate")
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, ValueError) as exc:
            raise WanspecError(f"cannot load CA certificate {ca}: {exc}") from exc
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
