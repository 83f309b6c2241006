"""Who may do what (docs/SECURITY.md): per-device secrets, broker credentials and ACLs, authenticated reports.

Each device gets a 32-byte secret at provisioning. It is the key of the HMAC-SHA256 over every
report the device makes (docs/PROTOCOL.md "Authenticated reports"), and its broker password is
derived from it. The registry keeps the secrets and each device's last report counter; the
broker sees only the password (the embedded broker asks this module, mosquitto gets a PBKDF2
password file and an ACL file written from it). A gateway and the server are principals too.

    ids = Identities(registry)
    cred = ids.enroll("a1b2c3")                    # new secret; config for the device: cred.device_config()
    ids.check_password("a1b2c3", cred.password)    # True (the embedded broker asks this)
    ids.allowed("a1b2c3", "publish", "fota/bb22/state")   # False: only its own topics
    body = ids.open_report("a1b2c3", "state", payload)    # the JSON, or None (forged, replayed, revoked)
    ids.revoke("a1b2c3")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools import protocol
from host_tools.errors import FotaError
from host_tools.server.registry import Registry

SERVER_USER = "fota-server"
GATEWAY_PREFIX = "gw-"
SECRET_LEN = 32
DEVICE_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # one MQTT topic level, no wildcards (mosquitto's %u)
GATEWAY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (PBKDF2-SHA512)

# What a device may do on the broker, under P/<its id>/ (docs/SECURITY.md "Broker access")
DEVICE_WRITES = ("state", "events", "get", "app/#")  # app/#: the application's own telemetry (issue 22)
DEVICE_READS = ("offer", "data", "cmd", "keys")  # keys: a root-signed key list on its own (issue 14)

SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY, kind TEXT, secret TEXT, counter INTEGER DEFAULT -1, revoked INTEGER DEFAULT 0,
    devices TEXT DEFAULT '', created {real}
);
"""
# Counters accepted out of order, at most this far below a device's newest: several server workers
# take a device's reports in parallel (docs/DEPLOY.md), so they may be checked in another order than
# sent. Each counter is accepted once, as in IPsec's anti-replay window (RFC 4303 3.4.3): the identity
# row keeps the newest counter and a bitmap of the window below it (`seen`, bit i: newest - i taken),
# and the newest state's counter (`state_counter`: an older state would undo it). One row, one UPDATE.
REPLAY_WINDOW = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


def _signed64(mask: int) -> int:
    """The window bitmap as a signed 64-bit column value (PostgreSQL's BIGINT, SQLite's INTEGER)."""
    return mask - (1 << 64) if mask >> 63 else mask


class IdentityError(FotaError):
    """An identity that cannot be made, or one that does not exist."""


@dataclass(frozen=True)
class Credentials:
    """What a device (or gateway) is given once, at provisioning."""

    user: str
    key: bytes  # the report key (HMAC-SHA256); empty for a gateway
    password: str  # the broker password

    def device_config(self) -> dict:
        """The config.json entries of the device: its id, broker user and password, report key."""
        return {"device_id": self.user, "user": self.user, "password": self.password, "key": self.key.hex()}


def broker_password(secret: bytes) -> str:
    """The broker password derived from a principal's secret (so the secret alone need be stored)."""
    return hmac.new(secret, b"fota broker password", hashlib.sha256).hexdigest()[:32]


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A mosquitto 2.x password_file hash, `$7$ITER$SALT$HASH` (PBKDF2-SHA512, as mosquitto_passwd writes)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _match(topic: str, allowed: str) -> bool:
    """MQTT filter match of a topic (or a requested filter) against an allowed filter; '+' and '#' in
    the request only match the same characters in the allowed filter."""
    req, ok = topic.split("/"), allowed.split("/")
    for i, part in enumerate(ok):
        if part == "#":
            return len(req) > i
        if i >= len(req) or (part != "+" and part != req[i]) or (part == "+" and req[i] == "#"):
            return False
    return len(req) == len(ok)


class Identities:
    """The principals of one registry: devices, gateways, the server; thread-safe."""

    def __init__(self, registry: Registry, prefix: str = "fota", *, shared: bool = False) -> None:
        self.db = registry.db
        self.prefix = prefix
        self.shared = shared  # one of several workers: each gets every report, a counter seen is another's copy
        self.db.script(SCHEMA.format(real="REAL" if self.db.kind == "sqlite" else "DOUBLE PRECISION"))
        # NULL in a registry from before the bitmap: every counter up to the newest counts as taken
        registry.add_column("identities", "seen", "BIGINT")
        registry.add_column("identities", "state_counter", "BIGINT")
        self._lock = threading.Lock()
        self.rejected = 0  # reports that failed the check (bad MAC, unknown or revoked device, malformed)
        self.replayed = 0  # reports whose counter was not above the last one (a replay; a redelivery is not counted)
        self.refused_logins = 0

    # -- principals ----------------------------------------------------------------------------------
    def _row(self, user: str) -> dict | None:
        rows = self.db.query("SELECT * FROM identities WHERE id = ?", (user,))
        return rows[0] if rows else None

    def _put(self, user: str, kind: str, secret: bytes, devices: str = "") -> None:
        self.db.execute(  # a new secret counts from the start
            "INSERT INTO identities (id, kind, secret, counter, seen, state_counter, revoked, devices, created)"
            " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET kind=excluded.kind, secret=excluded.secret,"
            " counter=excluded.counter, seen=excluded.seen, state_counter=excluded.state_counter, revoked=0,"
            " devices=excluded.devices, created=excluded.created",
            (user, kind, secret.hex(), -1, 0, -1, 0, devices, time.time()))

    def enroll(self, device: str) -> Credentials:
        """A new secret for `device` (an existing one is replaced: its old credentials stop working)."""
        if not DEVICE_ID.match(device) or device == SERVER_USER or device.startswith(GATEWAY_PREFIX):
            raise IdentityError(f"device id {device!r}: 1..64 of [0-9A-Za-z_-], not {SERVER_USER!r} nor {GATEWAY_PREFIX}...")
        secret = secrets.token_bytes(SECRET_LEN)
        self._put(device, "device", secret)
        return Credentials(device, secret, broker_password(secret))

    def enroll_gateway(self, name: str, devices: list[str]) -> Credentials:
        """A broker login for a gateway that relays for `devices` (it gets no report keys)."""
        if not GATEWAY_NAME.match(name):
            raise IdentityError(f"gateway name {name!r}: lower-case letters, digits, '-' and '_'")
        bad = [d for d in devices if not DEVICE_ID.match(d)]
        if bad:
            raise IdentityError(f"device ids {bad}: 1..64 of [0-9A-Za-z_-]")
        secret = secrets.token_bytes(SECRET_LEN)
        self._put(GATEWAY_PREFIX + name, "gateway", secret, ",".join(devices))
        return Credentials(GATEWAY_PREFIX + name, b"", broker_password(secret))

    def server_credentials(self) -> Credentials:
        """The server's own broker login (made on first use)."""
        with self._lock:
            row = self._row(SERVER_USER)
            if row is None:  # several workers starting at once: the first one's secret stays, all use it
                self.db.execute("INSERT INTO identities (id, kind, secret, counter, revoked, devices, created)"
                                " VALUES (?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
                                (SERVER_USER, "server", secrets.token_bytes(SECRET_LEN).hex(), -1, 0, "", time.time()))
                row = self._row(SERVER_USER)
            if row["revoked"]:
                self._put(SERVER_USER, "server", secrets.token_bytes(SECRET_LEN))
                row = self._row(SERVER_USER)
        return Credentials(SERVER_USER, b"", broker_password(bytes.fromhex(row["secret"])))

    def revoke(self, user: str) -> None:
        """The device or gateway can no longer log in to the broker or report."""
        if self._row(user) is None:
            raise IdentityError(f"no identity {user!r}", hint="fota devices lists the enrolled devices")
        self.db.execute("UPDATE identities SET revoked = 1 WHERE id = ?", (user,))

    def principals(self) -> list[dict]:
        """Every identity without its secret: id, kind, revoked, devices, last counter."""
        rows = self.db.query("SELECT id, kind, counter, revoked, devices, created FROM identities ORDER BY id")
        return [dict(r) for r in rows]

    def revoked(self) -> set[str]:
        """The ids of every revoked device and gateway (one query: the broker asks it every second)."""
        return {r["id"] for r in self.db.query("SELECT id FROM identities WHERE revoked = 1")}

    def is_enrolled(self, device: str) -> bool:
        row = self._row(device)
        return row is not None and row["kind"] == "device" and not row["revoked"]

    # -- the broker ---------------------------------------------------------------------------------
    def check_password(self, user: str | None, password: str | bytes | None) -> bool:
        """True when `user` exists, is not revoked and `password` is its broker password."""
        row = self._row(user) if user else None
        if row is None or row["revoked"] or password is None:
            self.refused_logins += 1
            return False
        given = password.encode() if isinstance(password, str) else bytes(password)
        ok = hmac.compare_digest(given, broker_password(bytes.fromhex(row["secret"])).encode())
        self.refused_logins += not ok
        return ok

    def check_login(self, user: str | None, password: str | bytes | None, client_id: str | None) -> bool:
        """check_password, and a device's or gateway's client id is its own id: one that connects with
        another's client id would close that one's connection (MQTT's session takeover), again and again."""
        if not self.check_password(user, password):
            return False
        row = self._row(user) if user else None
        if row is not None and row["kind"] in ("device", "gateway") and client_id != user:
            self.refused_logins += 1
            return False
        return True

    def acl(self, user: str) -> tuple[list[str], list[str]]:
        """(filters `user` may publish to, filters it may subscribe to / receive from)."""
        row = self._row(user)
        if row is None or row["revoked"]:
            return [], []
        p = self.prefix
        if row["kind"] == "server":
            return [f"{p}/#"], [f"{p}/#"]
        devices = [user] if row["kind"] == "device" else [d for d in row["devices"].split(",") if d]
        writes = [f"{p}/{d}/{k}" for d in devices for k in DEVICE_WRITES]
        reads = [f"{p}/{d}/{k}" for d in devices for k in DEVICE_READS]
        return writes, reads

    def allowed(self, user: str | None, action: str, topic: str) -> bool:
        """May `user` publish to `topic`, or subscribe to / receive from the filter `topic`?"""
        if not user or not topic:
            return False
        writes, reads = self.acl(user)
        return any(_match(topic, f) for f in (writes if action == "publish" else reads))

    def write_mosquitto(self, out: Path) -> list[Path]:
        """mosquitto's files for its two listeners (per_listener_settings true; docs/DEPLOY.md), from every
        identity that is not revoked; SIGHUP reloads them (and closes the connections of logins no longer in
        them). Returns the paths written.

        `fota.passwd`, `fota.acl`: the devices' listener (use_username_as_clientid true, so a login's client
        id is its username and no device can take over another's session): devices get `pattern` lines (%u =
        the username = the device id), each gateway its own `user` section. `fota-server.passwd`,
        `fota-server.acl`: the server's listener, where only the server logs in, with client ids of its own
        (one per worker, and `fota deploy`'s)."""
        p = self.prefix
        users, acl_lines = [], [f"# written by fota broker-files; devices only under {p}/<their id>/"]
        acl_lines += [f"pattern write {p}/%u/{k}" for k in DEVICE_WRITES]
        acl_lines += [f"pattern read {p}/%u/{k}" for k in DEVICE_READS]
        servers, server_acl = [], ["# written by fota broker-files: the server's listener"]
        for row in self.db.query("SELECT * FROM identities WHERE revoked = 0 ORDER BY id"):
            line = f"{row['id']}:{mosquitto_hash(broker_password(bytes.fromhex(row['secret'])))}"
            if row["kind"] == "server":
                servers.append(line)
                server_acl += [f"user {row['id']}", f"topic readwrite {p}/#"]
                continue
            users.append(line)
            if row["kind"] == "gateway":
                writes, reads = self.acl(row["id"])
                acl_lines += ["", f"user {row['id']}"] + [f"topic write {t}" for t in writes] + [f"topic read {t}" for t in reads]
        files = {"fota.passwd": users, "fota.acl": acl_lines, "fota-server.passwd": servers, "fota-server.acl": server_acl}
        for name, lines in files.items():
            path = out / name
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.chmod(tmp, 0o600)
            tmp.replace(path)
        return [out / name for name in files]

    # -- reports ----------------------------------------------------------------------------------
    def open_report(self, device: str, kind: str, payload: bytes) -> bytes | None:
        """The JSON bytes of an authenticated report from `device` (parse them with server.inbound), or
        None when it is not one: no MAC, a wrong MAC, a device unknown or revoked (counted in `rejected`),
        a counter seen before or more than REPLAY_WINDOW below the newest, or a state older than one already
        taken (it would undo the newer): a replay, counted in `replayed`; the newest counter again is the same
        report delivered twice, QoS 1 or retained, and is dropped without counting.

        Run it in the caller's `db.transaction()` together with what the report changes: the device's
        identity row is locked until then, so of several workers exactly one takes each report, and a
        worker that dies before its commit leaves the report to be taken again."""
        return self.open_reports([(device, kind, payload)])[0]

    def open_reports(self, reports: list[tuple[str, str, bytes]]) -> list[bytes | None]:
        """open_report for each (device, kind, payload) in order, in one transaction (the caller's, if it runs
        in one): the identity rows of all their devices locked at once, in id order, so that workers taking
        the same reports in batches wait for each other and never deadlock; one UPDATE per device."""
        out: list[bytes | None] = [None] * len(reports)
        splits = [protocol.split_report(payload) for _, _, payload in reports]
        self.rejected += sum(1 for s in splits if s is None)
        ids = sorted({device for (device, _, _), s in zip(reports, splits) if s is not None})
        if not ids:
            return out
        with self.db.atomic():
            rows = {r["id"]: r for r in self.db.query(
                "SELECT id, kind, secret, counter, seen, state_counter, revoked FROM identities"
                f" WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id" + self.db.for_update, tuple(ids))}
            windows: dict[str, list[int]] = {}  # device -> [newest counter, seen bitmap, newest state's counter]
            for i, ((device, kind, _), split) in enumerate(zip(reports, splits)):
                row = rows.get(device)
                if split is None:
                    continue
                body, counter, mac = split
                if row is None or row["kind"] != "device" or row["revoked"] or not hmac.compare_digest(
                        mac, protocol.report_mac(bytes.fromhex(row["secret"]), device, kind, counter, body)):
                    self.rejected += 1
                    continue
                if device not in windows:
                    last = row["counter"]
                    windows[device] = [last, _WINDOW_MASK if row["seen"] is None else row["seen"] & _WINDOW_MASK,
                                       last if row["state_counter"] is None else row["state_counter"]]
                if self._take(windows[device], kind, counter):
                    out[i] = body
            changed = [(last, _signed64(seen), state, device) for device, (last, seen, state) in windows.items()
                       if (last, _signed64(seen), state) != (rows[device]["counter"], rows[device]["seen"], rows[device]["state_counter"])]
            self.db.execute_many("UPDATE identities SET counter = ?, seen = ?, state_counter = ? WHERE id = ?", changed)
        return out

    def _take(self, window: list[int], kind: str, counter: int) -> bool:
        """Spend `counter` in the device's window ([newest, seen bitmap, newest state], updated in place);
        True if the report is to be taken, False for a replay or an old state (counted)."""
        last, seen, newest_state = window
        if counter > last:
            seen = (seen << min(counter - last, REPLAY_WINDOW) | 1) & _WINDOW_MASK
        elif last - counter >= REPLAY_WINDOW or seen >> (last - counter) & 1:
            self.replayed += counter < last and not self.shared
            return False
        else:
            seen |= 1 << (last - counter)
        old_state = kind == "state" and counter < newest_state  # taken (its counter is spent), never applied
        window[:] = [max(counter, last), seen, counter if kind == "state" and not old_state else newest_state]
        if old_state:
            self.replayed += 1  # an old state: a replay, or (several workers) overtaken by the newer one
        return not old_state

    def stats(self) -> dict:
        """Counters for metrics and tests."""
        return {"rejected": self.rejected, "replayed": self.replayed, "refused_logins": self.refused_logins}
