"""A development certificate authority and the SuperLink's server certificate.

``fedfleet certs create`` writes ``ca.crt``/``ca.key`` (a self-signed root) and
``server.crt``/``server.key`` (signed by it, with subject alternative names for the
addresses sites dial, 127.0.0.1 and localhost by default). Sites get ``ca.crt`` only.
Production deployments bring certificates from their own CA instead.
``fedfleet certs create-operator NAME`` issues an operator's client certificate for the
remote Control API from a separate operator CA (``operator-ca.crt``/``operator-ca.key``).

Keys are ECDSA P-384 from the ``cryptography`` package (operating-system randomness);
private keys are written with mode 0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
OPERATOR_CA_CERT, OPERATOR_CA_KEY = "operator-ca.crt", "operator-ca.key"


@dataclass(frozen=True)
class CertPaths:
    """Where a certificate set lives (all PEM)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CertPaths:
        return cls(
            ca_cert=directory / CA_CERT,
            ca_key=directory / CA_KEY,
            server_cert=directory / SERVER_CERT,
            server_key=directory / SERVER_KEY,
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfleet development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def validate_hosts(hosts: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse an empty host list or a blank/whitespace name."""
    if not hosts:
        raise ValueError("give at least one --host (an IP address or DNS name sites dial)")
    for host in hosts:
        if not host or host != host.strip() or " " in host:
            raise ValueError(f"host {host!r} is not an IP address or DNS name")
    return hosts


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_dev_ca(
    out_dir: Path,
    *,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    days: int = 365,
    overwrite: bool = False,
) -> CertPaths:
    """Create a CA and a server certificate for ``hosts`` in ``out_dir``.

    ``days`` is the validity of both certificates. Existing files are refused unless
    ``overwrite`` (replacing a CA silently would lock every site out).
    """
    validate_hosts(hosts)
    if days < 1:
        raise ValueError("--days must be >= 1")
    paths = CertPaths.in_dir(out_dir)
    existing = [p for p in vars(paths).values() if Path(p).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]} already exists; choose another --out or pass --force to replace it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedfleet development CA")
    ca_cert = _self_signed_ca(ca_key, ca_name, not_before, not_after)

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.server_key, _key_pem(server_key), private=True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths


def _self_signed_ca(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )


@dataclass(frozen=True)
class OperatorCertPaths:
    """An operator's client certificate and key, and the operator CA that issued it."""

    operator_ca: Path
    certificate: Path
    private_key: Path


def create_operator_cert(
    out_dir: Path, *, name: str, days: int = 365, overwrite: bool = False
) -> OperatorCertPaths:
    """Issue operator ``name`` a TLS client certificate for the remote Control API.

    It is signed by ``out_dir/operator-ca.crt`` — a CA of its own, created on first use,
    that signs nothing else: sites hold the coordinator's ``ca.crt`` and their own SSH-format
    node keys, none of which chains to it, so no site material passes the operators'
    listener (``superlink.operator-address``). ``days`` is the certificate's validity.
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"operator name {name!r}: use letters, digits, '-' or '_'")
    if days < 1:
        raise ValueError("--days must be >= 1")
    cert_path = out_dir / f"operator-{name}.crt"
    key_path = out_dir / f"operator-{name}.key"
    if (cert_path.exists() or key_path.exists()) and not overwrite:
        raise ValueError(f"{cert_path} already exists; choose another name or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_cert_path, ca_key_path = out_dir / OPERATOR_CA_CERT, out_dir / OPERATOR_CA_KEY
    if ca_cert_path.exists() != ca_key_path.exists():
        raise ValueError(f"{ca_cert_path} and {ca_key_path} must both exist or neither")
    if ca_cert_path.exists():
        ca_cert = load_certificate(ca_cert_path)
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not the operator CA's EC private key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = _self_signed_ca(
            ca_key,
            _name("fedfleet operator CA"),
            not_before,
            now + dt.timedelta(days=max(days, 3650)),
        )
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"operator {name}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return OperatorCertPaths(operator_ca=ca_cert_path, certificate=cert_path, private_key=key_path)


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate with a clear error when it is missing or not PEM."""
    if not path.is_file():
        raise ValueError(f"certificate {path} does not exist; run `fedfleet certs create`")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError(f"{path} is not a PEM certificate") from None


def certificate_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + list(
        san.get_values_for_type(x509.DNSName)
    )
