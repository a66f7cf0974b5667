"""Create a private CA, a server certificate and client certificates, so two sites can run TLS/QUIC
(and mutual TLS) without a public CA.

The controller trusts ``ca.pem`` only; the worker serves ``server.pem``/``server.key``.  For
mutual TLS the worker trusts the same ``ca.pem`` for clients (``--client-ca``) and a controller
presents ``client.pem``/``client.key`` (or a certificate of its own from
:func:`create_client_cert`).  The server certificate is for serverAuth only and a client
certificate for clientAuth only, so neither can stand in for the other.  Keys are EC P-256
(small, fast, accepted by OpenSSL and aioquic alike) and are written owner-read-only.  The
extensions (CA basic constraints and key usage, subject/authority key identifiers, SANs,
extended key usage) are the ones strict verifiers insist on, so the same files work for Python's
``ssl`` and for aioquic.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
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
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class ClientCertPaths:
    """Where :func:`create_client_cert` put a client certificate and its key."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanspec"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


# a DNS name as a certificate names it: dot-separated labels of letters, digits and hyphens (not
# at a label's ends), a leading "*." wildcard allowed; 253 characters at most
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _dns_name(host: str) -> bool:
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    return (len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())  # 999.1.1.1 is a mistyped address, not a name


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _dns_name(host):
            raise WanspecError(f"--host {host!r} is neither an IP address nor a DNS name (give "
                               "the name or address alone: no port, scheme or path)")
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


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise WanspecError(f"certificate validity must be at least 1 day, got {days}")
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)  # tolerate clock skew


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise WanspecError(f"refusing to overwrite existing {names} (--overwrite replaces them)")


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WanspecError(f"cannot create directory {directory}: {exc.strerror}") from exc


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    validity: tuple[dt.datetime, dt.datetime],
    san: x509.SubjectAlternativeName | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and an end-entity certificate for it, signed by the CA, for one ``usage``
    (serverAuth or clientAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def create_certs(
    directory: Path,
    *,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    days: int = 825,
    overwrite: bool = False,
) -> CertPaths:
    """Write ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``client.pem`` and
    ``client.key`` into ``directory``.

    The server certificate names every entry of ``hosts`` (DNS names or IP addresses) so the
    controller can verify the worker by whatever address it dials; the client certificate is
    for a controller to present to a worker that requires one (``--client-ca ca.pem``).
    Refuses to overwrite existing files unless ``overwrite`` (replacing a CA silently would lock
    out controllers that trust it).
    """
    validity = _validity(days)
    san = _san(hosts)
    directory = Path(directory).expanduser()
    paths = CertPaths(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    _refuse_existing((paths.ca_cert, paths.ca_key, paths.cert, paths.key, paths.client_cert,
                      paths.client_key), overwrite)
    _mkdir(directory)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("wanspec CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    first = san.get_values_for_type(x509.DNSName) or [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]
    key, cert = _leaf(ca_key, ca_cert, first[0], ExtendedKeyUsageOID.SERVER_AUTH, validity, san)
    client_key, client_cert = _leaf(ca_key, ca_cert, "wanspec controller",
                                    ExtendedKeyUsageOID.CLIENT_AUTH, validity)

    pem = serialization.Encoding.PEM
    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.ca_cert, ca_cert.public_bytes(pem), private=False)
    _write(paths.key, _key_pem(key), private=True)
    _write(paths.cert, cert.public_bytes(pem), private=False)
    _write(paths.client_key, _key_pem(client_key), private=True)
    _write(paths.client_cert, client_cert.public_bytes(pem), private=False)
    return paths


_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def create_client_cert(
    directory: Path, name: str, *, days: int = 825, overwrite: bool = False
) -> ClientCertPaths:
    """Issue one more client certificate, ``NAME.pem``/``NAME.key``, from the CA that
    :func:`create_certs` left in ``directory`` (one per controller, say, so each can be told
    apart and replaced alone)."""
    if not _CLIENT_NAME.fullmatch(name) or name in ("ca", "server"):
        raise WanspecError(f"bad client certificate name {name!r}: use letters, digits, '.', "
                           "'_' or '-' (not 'ca' or 'server')")
    validity = _validity(days)
    directory = Path(directory).expanduser()
    ca_pem, ca_key_pem = directory / "ca.pem", directory / "ca.key"
    for p in (ca_pem, ca_key_pem):
        if not p.is_file():
            raise WanspecError(f"{p} not found: create the CA first with `wanspec certs "
                               f"{directory}`")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise WanspecError(f"cannot load the CA in {directory}: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise WanspecError(f"{ca_key_pem} is not the EC key `wanspec certs` creates")
    paths = ClientCertPaths(cert=directory / f"{name}.pem", key=directory / f"{name}.key")
    _refuse_existing((paths.cert, paths.key), overwrite)
    key, cert = _leaf(ca_key, ca_cert, name, ExtendedKeyUsageOID.CLIENT_AUTH, validity)
    _write(paths.key, _key_pem(key), private=True)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths
