"""TLS contexts for the TCP transport, with errors a person can act on.

The worker serves a certificate (usually from ``wanspec certs DIR``); the controller verifies it
against the CA that signed it.  ``insecure`` exists for quick tests on a trusted network only:
it still encrypts but does not authenticate the worker.

Mutual TLS: a worker given ``client_ca`` requires every controller to present a certificate
signed by that CA (for client authentication: its extended key usage, if any, must allow
``clientAuth``), which a controller does with ``cert``/``key``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from wanspec.errors import WanspecError


NO_CLIENT_CERT = ("no TLS client certificate was presented (the worker's --client-ca requires "
                  "one: give the controller --cert and --key)")


def name_not_covered(where: str, host: str) -> str:
    """The worker's certificate is valid but not for the name the controller dialled: which name,
    and how to issue a certificate that covers it (``wanspec certs`` covers only localhost
    unless given ``--host``)."""
    return (f"cannot trust {where}: its certificate does not cover the name {host!r}; issue one "
            f"that does with `wanspec certs DIR --host {host}` and restart the worker with it, "
            "or dial a name the certificate covers")


def untrusted_client_cert(why: str) -> str:
    """Why a client certificate is refused, in words both sites' operators can act on."""
    return (f"the TLS client certificate is not trusted ({why}): the controller's --cert must be "
            "signed by the CA given to the worker's --client-ca")


def require_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WanspecError(f"{what} not found: {path} (create one with `wanspec certs DIR`)")
    return path


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
    cert = require_file(cert, f"{what} certificate")
    key = require_file(key, f"{what} private key")
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise WanspecError(
            f"cannot load {what} certificate {cert} with key {key}: {exc} "
            "(do they belong together and are they PEM?)"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path, what: str) -> None:
    ca = require_file(ca, what)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, ValueError) as exc:
        raise WanspecError(f"cannot load {what} {ca}: {exc}") from exc


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """Server side: present ``cert`` (PEM chain) with its private ``key``; TLS 1.2 at least.

    With ``client_ca``, a client must present a certificate that CA signed, or the handshake fails.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key, "TLS")
    if client_ca is not None:
        _load_ca(ctx, client_ca, "client CA certificate")
        ctx.verify_mode = ssl.CERT_REQUIRED  # (OpenSSL checks the clientAuth purpose too)
    return ctx


def check_client_trust(ca: Path | None, insecure: bool, cert: Path | None = None,
                       key: Path | None = None) -> None:
    """The client's trust flags: a CA to check against and no checking at all contradict each
    other (the CA would be silently ignored); a client certificate needs its key."""
    if ca is not None and insecure:
        raise WanspecError("give --ca or --insecure, not both")
    if (cert is None) != (key is None):
        raise WanspecError("a TLS client certificate needs both --cert and --key")


def client_ssl_context(ca: Path | None, *, insecure: bool = False, cert: Path | None = None,
                       key: Path | None = None) -> ssl.SSLContext:
    """Client side: trust ``ca`` (system store if None); ``insecure`` skips verification;
    ``cert``/``key``: a client certificate to present (mutual TLS)."""
    check_client_trust(ca, insecure, cert, key)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(ctx, ca, "CA certificate")
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key, "TLS client")
    return ctx
