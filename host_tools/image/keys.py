"""Ed25519 signing keys: generate, load, sign through a `Signer`, export for devices.

A `Signer` is anything that can name its key and sign bytes; a file key is one,
and an HSM or a cloud KMS is another without touching the callers:

    key = generate_key(Path("release.pem"), passphrase=None)   # writes .pem (0600) and .pub
    signer = FileSigner.load(Path("release.pem"))
    sig = signer.sign(b"...")                                   # 64 bytes
    PublicKey.load(Path("release.pub")).verify(sig, b"...")     # bool
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from host_tools.errors import EXIT_NOT_FOUND, FotaError

KEY_ID_SIZE = 8


class KeyError_(FotaError):
    """A key file that is missing, malformed, or needs a passphrase."""


def key_id(raw_public: bytes) -> bytes:
    """The 8-byte id carried in package headers: SHA-256 of the raw public key, truncated."""
    return hashlib.sha256(raw_public).digest()[:KEY_ID_SIZE]


@dataclass(frozen=True)
class PublicKey:
    """A raw 32-byte Ed25519 public key."""

    raw: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        """A PEM public key, a PEM private key (its public half), or 32 raw bytes."""
        data = _read(path)
        if len(data) == 32:
            return cls(data)
        try:
            if b"PRIVATE KEY" in data:
                return FileSigner.load(path).public_key
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyError_(f"{path}: not an Ed25519 key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyError_(f"{path}: not an Ed25519 public key")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


class Signer(Protocol):
    """What package signing needs from a key: its public half and a signature."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, message: bytes) -> bytes: ...


class FileSigner:
    """An Ed25519 private key held in a PEM file (PKCS#8, optionally encrypted)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @property
    def public_key(self) -> PublicKey:
        raw = self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(raw)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM (encrypted when a passphrase is given)."""
        encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> FileSigner:
        data = _read(path)
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as exc:
            raise KeyError_(f"{path} is encrypted: give its passphrase", hint="--passphrase-env VAR") from exc
        except ValueError as exc:
            raise KeyError_(f"{path}: cannot load the private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyError_(f"{path}: not an Ed25519 private key")
        return cls(key)


def generate_key(path: Path, passphrase: bytes | None = None, *, overwrite: bool = False) -> FileSigner:
    """Write a new private key to `path` (mode 0600) and its public key beside it (.pub)."""
    if path.exists() and not overwrite:
        raise KeyError_(f"{path} exists already; refusing to overwrite a signing key")
    private = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)
    signer = FileSigner(private)
    path.with_suffix(".pub").write_bytes(signer.public_key.to_pem())
    return signer


def weak_key(raw: bytes) -> bool:
    """True for a public key a device refuses: not a curve point, or of small order.

    The device's own test (firmware/fota/check/ed25519.py `weak_key`), so host and device agree.
    """
    from host_tools import firmware

    return bool(firmware.load("check.ed25519").weak_key(raw))


def check_not_weak(key: PublicKey, what: str = "public key") -> None:
    if weak_key(key.raw):
        raise KeyError_(f"{what} {key.raw.hex()} is of small order (or not a curve point): devices refuse it")


def private_key_exposed(path: Path) -> bool:
    """True when a private key file can be read or written by group or others (POSIX modes)."""
    try:
        return os.name == "posix" and bool(Path(path).stat().st_mode & 0o077)
    except OSError:
        return False


def trusted_keys_module(keys: list[PublicKey], roots: list[PublicKey] | None = None) -> str:
    """The device's trusted-keys module: generated; KEYS (release keys) and ROOTS (key-list roots)."""
    roots = list(roots or [])
    if not keys and not roots:
        raise KeyError_("at least one public key is needed")
    for key in keys:
        check_not_weak(key, "release key")
    for key in roots:
        check_not_weak(key, "root key")
    lines = [
        "# Generated by `fota keys export`: do not edit.",
        "# KEYS: the Ed25519 release keys this firmware accepts packages from until it has seen a",
        "# key list; ROOTS: the offline root keys whose signed key lists it accepts (docs/FORMAT.md).",
        "KEYS = (",
    ]
    for key in keys:
        lines.append(f"    ({key.key_id!r}, {key.raw!r}),")
    lines.append(")")
    lines.append("ROOTS = (")
    for key in roots:
        lines.append(f"    ({key.key_id!r}, {key.raw!r}),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise KeyError_(f"no such key file: {path}", hint="fota keygen makes a key and its .pub", exit_code=EXIT_NOT_FOUND) from exc
