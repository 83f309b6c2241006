"""Real MQTT brokers for tests: mosquitto on a free loopback port, plain or TLS, and a throwaway CA.

    from brokers import mosquitto, mosquitto_tls, free_port, make_test_ca, issue_server_cert

    def test_x(mosquitto):                  # function scope; skipped if mosquitto is not installed
        ...connect to mosquitto.host, mosquitto.port...
        mosquitto.stop(); mosquitto.start()  # a broker restart on the same port
        mosquitto.suspend(); mosquitto.resume()  # SIGSTOP/SIGCONT: TCP stays open but silent

    def test_tls(mosquitto_tls):            # server cert issued by mosquitto_tls.ca (CN "fota test CA")
        mosquitto_tls.ca.der                # the CA certificate in DER, for the MicroPython client

    rogue = make_test_ca(tmp_path, cn="rogue CA")      # a CA the device does not trust
    broker = start_mosquitto(tmp_path, tls=issue_server_cert(rogue, tmp_path))
    try: ... finally: broker.stop()

    def test_fota(fota_mosquitto):          # logins and ACLs: mosquitto's real password and ACL files
        server = Server(ServerConfig(..., broker_url=fota_mosquitto.server_url))   # devices: .url / .port
        cred = server.identities.enroll("a1b2")     # then write the files and SIGHUP (waits for the reload):
        fota_mosquitto.sync(server.identities)

`mosquitto` and `mosquitto_tls` are anonymous brokers for the MQTT client's protocol tests; a fota
server and its devices run on `fota_mosquitto` (allow_anonymous false, per-device ACL patterns; the devices'
listener with use_username_as_clientid, the server's own listener at `.server_url`, as docs/DEPLOY.md).
Brokers only listen on 127.0.0.1. The broker's own log is in `broker.log` (a Path) for failure messages.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO = os.environ.get("MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


# ---------------------------------------------------------------- test CA


@dataclass
class TestCA:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    cn: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_pem: Path  # CA certificate, PEM (mosquitto's cafile)
    key_pem: Path

    @property
    def der(self) -> bytes:
        """The CA certificate in DER: what `ssl.SSLContext.load_verify_locations(cadata=...)` takes on the device."""
        return self.cert.public_bytes(serialization.Encoding.DER)


class ServerCert(NamedTuple):
    cert: Path  # PEM, leaf certificate
    key: Path  # PEM, unencrypted private key
    ca: Path  # PEM, the issuing CA's certificate (mosquitto's cafile)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "ca"


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))


def make_test_ca(tmp_path: Path, cn: str = "fota test CA") -> TestCA:
    """A self-signed P-256 CA; files ca-<cn>.pem / ca-<cn>.key in tmp_path (created if missing)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    slug = _slug(cn)
    cert_pem, key_pem = tmp_path / f"ca-{slug}.pem", tmp_path / f"ca-{slug}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_pem)
    return TestCA(cn, key, cert, cert_pem, key_pem)


def issue_server_cert(ca: TestCA, tmp_path: Path, hostnames: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCert:
    """A P-256 server certificate signed by `ca`, SAN = each hostname (IP addresses as iPAddress, others as dNSName)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    cert = _validity(builder).sign(ca.key, hashes.SHA256())
    slug = _slug(ca.cn)
    cert_pem, key_pem = tmp_path / f"server-{slug}.pem", tmp_path / f"server-{slug}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_pem)
    return ServerCert(cert_pem, key_pem, ca.cert_pem)


# ---------------------------------------------------------------- mosquitto


class Mosquitto:
    """One mosquitto process on a fixed port; stop() and start() again keep the port (broker-restart tests)."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None, tls: ServerCert | None = None, auth: bool = False):
        self.port = port or free_port()  # the devices' listener
        self.server_port = free_port() if auth else self.port  # with auth: the server's own listener
        self.tls = tls
        self.ca: TestCA | None = None  # set by mosquitto_tls
        name = f"mosquitto-{self.port}"
        self.conf = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        self.files = workdir / f"{name}-files"  # with auth: what `fota broker-files --out` writes (sync)
        lines = [
            "persistence false",
            "user root" if os.geteuid() == 0 else "",  # as root it would drop to `mosquitto`, who cannot read tmp_path
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if auth:  # docs/DEPLOY.md's mosquitto.conf: two listeners, each with its own files
            self.files.mkdir(exist_ok=True)
            for f in ("fota.passwd", "fota.acl", "fota-server.passwd", "fota-server.acl"):
                (self.files / f).write_text("")
            lines += ["per_listener_settings true", "log_type information",  # "Reloading config."
                      f"listener {self.port} {self.host}", "allow_anonymous false", "use_username_as_clientid true",
                      f"password_file {self.files / 'fota.passwd'}", f"acl_file {self.files / 'fota.acl'}"]
        else:
            lines += [f"listener {self.port} {self.host}", "allow_anonymous true"]
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.cert}",
                f"keyfile {tls.key}",
                "require_certificate false",
            ]
        if auth:
            lines += [f"listener {self.server_port} {self.host}", "allow_anonymous false",
                      f"password_file {self.files / 'fota-server.passwd'}", f"acl_file {self.files / 'fota-server.acl'}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Mosquitto:
        """Start the broker (again) and wait until the port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.01)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); a suspended broker is resumed first so it can exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def url(self) -> str:
        """The devices' listener (the only one without auth)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def server_url(self) -> str:
        """What `fota serve --broker` is given: with auth the server's own listener (plain TCP on loopback)."""
        return f"mqtt://{self.host}:{self.server_port}" if self.server_port != self.port else self.url

    def sync(self, identities) -> None:
        """Write the password and ACL files from `identities` (what `fota broker-files` writes) and make the
        running broker reload them (SIGHUP); returns once the broker logged the reload."""
        identities.write_mosquitto(self.files)
        if self.proc is None or self.proc.poll() is not None:
            return
        before = self.log.read_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.log.read_text().count("Reloading config") == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload: {self.log.read_text()[-2000:]}")
            time.sleep(0.01)
        time.sleep(0.05)  # the reload is logged before the files are read

    def suspend(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung broker or a silent network)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)


def start_mosquitto(tmp_path: Path, *, tls: ServerCert | None = None, port: int | None = None, auth: bool = False) -> Mosquitto:
    """A started broker (TLS when `tls` is given; logins and ACLs with `auth`); the caller stops it.
    Skips the test without mosquitto."""
    if not mosquitto_available():
        pytest.skip(f"mosquitto not installed ({MOSQUITTO}); `make system-deps` installs it")
    return Mosquitto(tmp_path, port=port, tls=tls, auth=auth).start()


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A plain-TCP mosquitto on 127.0.0.1:<free port>, anonymous, no persistence."""
    broker = start_mosquitto(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fota_mosquitto(tmp_path: Path):
    """mosquitto as a fota deployment runs it (docs/DEPLOY.md): no anonymous clients, the password and ACL
    files from the server's identities (`.sync(identities)` after enrolling); devices on 127.0.0.1:`.port`,
    the server on `.server_url`."""
    broker = start_mosquitto(tmp_path, auth=True)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_tls(tmp_path: Path):
    """A TLS-only mosquitto whose server certificate (SAN 127.0.0.1, localhost) is issued by `.ca`."""
    ca = make_test_ca(tmp_path)
    broker = start_mosquitto(tmp_path, tls=issue_server_cert(ca, tmp_path))
    broker.ca = ca
    try:
        yield broker
    finally:
        broker.stop()
