"""The device registry: devices, packages, offers and their outcomes, and an event log.

SQLite in the data directory (one file, safe across the `fota serve` process and
the CLI commands that read or add to it).

    reg = Registry(Path("data/registry.sqlite"))
    reg.record_state("a1b2", {"version": "1.0.0", ...})
    offer_id = reg.create_offer("a1b2", package_id, chunk=4096, policy=0)
    reg.offer_outcome(offer_id, "SUCCEEDED")
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, board TEXT, hw_rev TEXT, version TEXT, seq INTEGER, slot TEXT,
    state INTEGER, progress TEXT, result INTEGER, code INTEGER, detail TEXT, errors TEXT,
    groups_ TEXT DEFAULT '', tags TEXT DEFAULT '', last_seen REAL
);
CREATE TABLE IF NOT EXISTS packages (
    id TEXT PRIMARY KEY, path TEXT, version TEXT, sequence INTEGER, board TEXT, hw_revs TEXT,
    image_size INTEGER, encoded_size INTEGER, encoding TEXT, added REAL
);
CREATE TABLE IF NOT EXISTS offers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT, package TEXT, chunk INTEGER, policy INTEGER,
    status TEXT, code INTEGER, reason TEXT, created REAL, updated REAL
);
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY, spec TEXT, status TEXT, wave INTEGER, created REAL, updated REAL, note TEXT
);
CREATE TABLE IF NOT EXISTS campaign_devices (
    campaign TEXT, device TEXT, wave INTEGER, status TEXT, offer INTEGER, attempts INTEGER DEFAULT 0,
    started REAL, finished REAL, code INTEGER, reason TEXT, PRIMARY KEY (campaign, device)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT, offer INTEGER, event TEXT, body TEXT, t REAL
);
"""

# Offer statuses: OFFERED -> DOWNLOADING -> DOWNLOADED -> INSTALLING -> SUCCEEDED, or one of
# ROLLED_BACK, REFUSED (the device refused the package, with its reason), FAILED, TIMED_OUT, CANCELLED.
FINAL = ("SUCCEEDED", "ROLLED_BACK", "REFUSED", "FAILED", "TIMED_OUT", "CANCELLED")
REFUSAL_CODES = range(1, 16)  # firmware/ota/errors.py: the manifest checks


@dataclass
class Offer:
    id: int
    device: str
    package: str
    chunk: int
    policy: int
    status: str
    code: int | None
    reason: str | None


class Registry:
    """Thread-safe access to the registry database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock, self._db:
            return self._db.execute(sql, args)

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- devices ----------------------------------------------------------
    def record_state(self, device: str, state: dict) -> None:
        """The device's retained state message, as it reported it."""
        self._exec(
            "INSERT INTO devices (id, board, hw_rev, version, seq, slot, state, progress, result, code, detail, errors, last_seen)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET board=excluded.board, hw_rev=excluded.hw_rev,"
            " version=excluded.version, seq=excluded.seq, slot=excluded.slot, state=excluded.state, progress=excluded.progress,"
            " result=excluded.result, code=excluded.code, detail=excluded.detail, errors=excluded.errors, last_seen=excluded.last_seen",
            (device, state.get("board"), state.get("hw_rev"), state.get("version"), state.get("seq"), state.get("slot"),
             state.get("state"), json.dumps(state.get("progress")), state.get("result"), state.get("code"),
             state.get("detail"), json.dumps(state.get("errors") or []), time.time()),
        )

    def set_tags(self, device: str, tags: list[str]) -> None:
        self._exec("INSERT INTO devices (id, tags) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET tags=excluded.tags",
                   (device, ",".join(tags)))

    def set_groups(self, device: str, groups: list[str]) -> None:
        self._exec("INSERT INTO devices (id, groups_) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET groups_=excluded.groups_",
                   (device, ",".join(groups)))

    def devices(self, group: str | None = None) -> list[dict]:
        rows = [dict(r) for r in self._all("SELECT * FROM devices ORDER BY id")]
        for r in rows:
            r["groups"] = [g for g in (r.pop("groups_") or "").split(",") if g]
            r["tags"] = [t for t in (r.get("tags") or "").split(",") if t]
        return [r for r in rows if group is None or group in r["groups"]]

    def device(self, device: str) -> dict | None:
        found = [d for d in self.devices() if d["id"] == device]
        return found[0] if found else None

    # -- packages -----------------------------------------------------------
    def add_package(self, pid: str, path: str, manifest) -> None:
        self._exec(
            "INSERT OR IGNORE INTO packages VALUES (?,?,?,?,?,?,?,?,?,?)",
            (pid, path, manifest.version, manifest.sequence, manifest.board, ",".join(manifest.hw_revs),
             manifest.image_size, manifest.encoded_size, manifest.encoding_name, time.time()),
        )

    def package(self, pid: str) -> dict | None:
        rows = self._all("SELECT * FROM packages WHERE id = ?", (pid,))
        return dict(rows[0]) if rows else None

    # -- offers -------------------------------------------------------------
    def create_offer(self, device: str, package: str, *, chunk: int, policy: int) -> int:
        now = time.time()
        cur = self._exec(
            "INSERT INTO offers (device, package, chunk, policy, status, created, updated) VALUES (?,?,?,?,?,?,?)",
            (device, package, chunk, policy, "OFFERED", now, now),
        )
        return int(cur.lastrowid)

    def offer(self, offer_id: int) -> Offer | None:
        rows = self._all("SELECT id, device, package, chunk, policy, status, code, reason FROM offers WHERE id = ?", (offer_id,))
        return Offer(**dict(rows[0])) if rows else None

    def offers(self, device: str | None = None) -> list[Offer]:
        sql = "SELECT id, device, package, chunk, policy, status, code, reason FROM offers"
        rows = self._all(sql + (" WHERE device = ? ORDER BY id" if device else " ORDER BY id"), (device,) if device else ())
        return [Offer(**dict(r)) for r in rows]

    def set_offer_status(self, offer_id: int, status: str, *, code: int | None = None, reason: str | None = None) -> None:
        """Move an offer on; a final status is never overwritten."""
        current = self.offer(offer_id)
        if current is None or current.status in FINAL:
            return
        self._exec("UPDATE offers SET status=?, code=?, reason=?, updated=? WHERE id=?",
                   (status, code, reason, time.time(), offer_id))

    # -- campaigns ------------------------------------------------------------
    def save_campaign(self, name: str, spec: dict, status: str, wave: int = 0, note: str = "") -> None:
        now = time.time()
        self._exec(
            "INSERT INTO campaigns VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET spec=excluded.spec,"
            " status=excluded.status, wave=excluded.wave, updated=excluded.updated, note=excluded.note",
            (name, json.dumps(spec), status, wave, now, now, note),
        )

    def campaign(self, name: str) -> dict | None:
        rows = self._all("SELECT * FROM campaigns WHERE name = ?", (name,))
        if not rows:
            return None
        row = dict(rows[0])
        row["spec"] = json.loads(row["spec"])
        return row

    def campaigns(self) -> list[dict]:
        return [self.campaign(r["name"]) for r in self._all("SELECT name FROM campaigns ORDER BY created")]

    def set_campaign_status(self, name: str, status: str, *, wave: int | None = None, note: str | None = None) -> None:
        current = self.campaign(name)
        self._exec("UPDATE campaigns SET status=?, wave=?, note=?, updated=? WHERE name=?",
                   (status, current["wave"] if wave is None else wave, current["note"] if note is None else note, time.time(), name))

    def add_campaign_device(self, campaign: str, device: str, wave: int, status: str, reason: str | None = None) -> None:
        self._exec("INSERT OR REPLACE INTO campaign_devices (campaign, device, wave, status, reason) VALUES (?,?,?,?,?)",
                   (campaign, device, wave, status, reason))

    def campaign_devices(self, campaign: str) -> list[dict]:
        return [dict(r) for r in self._all("SELECT * FROM campaign_devices WHERE campaign = ? ORDER BY wave, device", (campaign,))]

    def update_campaign_device(self, campaign: str, device: str, **fields) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE campaign_devices SET {cols} WHERE campaign=? AND device=?", (*fields.values(), campaign, device))

    # -- events ---------------------------------------------------------------
    def add_event(self, device: str, event: dict) -> None:
        self._exec("INSERT INTO events (device, offer, event, body, t) VALUES (?,?,?,?,?)",
                   (device, event.get("offer"), event.get("event"), json.dumps(event), time.time()))

    def events(self, device: str | None = None) -> list[dict]:
        sql = "SELECT device, offer, event, body, t FROM events"
        rows = self._all(sql + (" WHERE device = ? ORDER BY id" if device else " ORDER BY id"), (device,) if device else ())
        return [dict(r) | {"body": json.loads(r["body"])} for r in rows]


def status_for_event(event: dict) -> tuple[str, int | None, str | None] | None:
    """What a device event means for its offer: (status, code, reason), or None."""
    name = event.get("event")
    code = event.get("code")
    if name == "downloading":
        return "DOWNLOADING", None, None
    if name in ("downloaded", "deferred"):
        return "DOWNLOADED", None, None
    if name == "rebooting":
        return "INSTALLING", None, None
    if name == "committed":
        return "SUCCEEDED", None, None
    if name == "rolled_back":
        return "ROLLED_BACK", code, f"{event.get('name')}: {event.get('detail')}"
    if name == "failed":
        status = "REFUSED" if code in REFUSAL_CODES else "FAILED"
        return status, code, f"{event.get('name')}: {event.get('detail')}"
    return None
