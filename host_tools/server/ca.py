"""A small CA for the broker's TLS, on `cryptography` (no hand-made X.509): `fota ca init`, `fota ca issue-server`.

    paths = init_ca(Path("ca"), "fota CA")          # ca.pem, ca.key (0600), ca.der (the device's config "ca")
    cert, key = issue_server(Path("ca"), ["broker.lan", "192.168.1.10"], Path("broker"))
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host_tools.errors import FotaError


class CaError(FotaError):
    """The CA directory is missing or holds something else."""


@dataclass(frozen=True)
class CaPaths:
    cert: Path
    key: Path
    der: Path


def _paths(directory: Path) -> CaPaths:
    return CaPaths(directory / "ca.pem", directory / "ca.key", directory / "ca.der")


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, cn: str = "fota CA", days: int = 3650) -> CaPaths:
    """A self-signed P-256 CA (path length 0: it signs servers only)."""
    paths = _paths(directory)
    if paths.key.exists():
        raise CaError(f"{paths.key} exists already", hint="use another directory, or keep the CA you have")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(key, paths.key)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return paths


def issue_server(directory: Path, hosts: list[str], out: Path, days: int = 825) -> tuple[Path, Path]:
    """A P-256 server certificate for `hosts` (IP addresses as iPAddress SANs, names as dNSName) -> (OUT.pem, OUT.key)."""
    paths = _paths(directory)
    if not paths.key.exists():
        raise CaError(f"no CA in {directory}", hint=f"fota ca init {directory}")
    ca_key = serialization.load_pem_private_key(paths.key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{paths.key} is not an EC key")
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1)).not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out.with_suffix(".pem"), out.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path
