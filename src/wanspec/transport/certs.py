"""Create a private CA and a server certificate, so a worker can run TLS/QUIC without a public CA.

The controller trusts ``ca.pem`` only; the worker serves ``server.pem``/``server.key``.  Keys are
EC P-256 (small, fast, accepted by OpenSSL and aioquic alike) and are written owner-read-only.
The extensions (CA basic constraints and key usage, subject/authority key identifiers, SANs,
serverAuth) are the ones strict verifiers insist on, so the same files work for Python's ``ssl``
and for aioquic.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wanspec.errors import WanspecError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertPaths:
    """Where :func:`create_certs` put things."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanspec"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise WanspecError("certificate needs at least one host name or IP address")
    return x509.SubjectAlternativeName(names)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode does not apply to an existing file


def create_certs(
    directory: Path,
    *,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    days: int = 825,
    overwrite: bool = False,
) -> CertPaths:
    """Write ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key`` into ``directory``.

    The server certificate names every entry of ``hosts`` (DNS names or IP addresses) so the
    controller can verify the worker by whatever address it dials.  Refuses to overwrite existing
    files unless ``overwrite`` (replacing a CA silently would lock out controllers that trust it).
    """
    if days < 1:
        raise WanspecError(f"certificate validity must be at least 1 day, got {days}")
    san = _san(hosts)
    directory = Path(directory).expanduser()
    paths = CertPaths(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "server.pem",
        key=directory / "server.key",
    )
    existing = [p for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key) if p.exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise WanspecError(f"refusing to overwrite existing {names} (pass overwrite to replace)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WanspecError(f"cannot create directory {directory}: {exc.strerror}") from exc

    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(hours=1)  # tolerate small clock skew between sites
    end = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("wanspec CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    first = san.get_values_for_type(x509.DNSName) or [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(first[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.ca_cert, ca_cert.public_bytes(pem), private=False)
    _write(paths.key, _key_pem(key), private=True)
    _write(paths.cert, cert.public_bytes(pem), private=False)
    return paths
