"""The audit log: every change made through the API, who made it and when, in the registry's database.

    log = AuditLog(registry.db)
    log.record(principal, "campaign.pause", "r42", {"note": "..."})
    log.entries(limit=50)     # newest first
"""

from __future__ import annotations

import json
import time

from host_tools.server.api.auth import Principal
from host_tools.server.registry import SCHEMA_TYPES

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id {serial}, t {real}, who TEXT, role TEXT, action TEXT, target TEXT, detail TEXT
)
"""


class AuditLog:
    """Append-only; the API writes an entry after each change it made (never for refused requests)."""

    def __init__(self, db) -> None:
        self._db = db
        self._db.script(SCHEMA.format(**SCHEMA_TYPES[db.kind]))

    def record(self, who: Principal, action: str, target: str, detail: dict | None = None) -> None:
        self._db.execute("INSERT INTO audit (t, who, role, action, target, detail) VALUES (?,?,?,?,?,?)",
                         (time.time(), who.name, who.role, action, target, json.dumps(detail or {}, default=str)))

    def entries(self, limit: int = 100, action: str | None = None) -> list[dict]:
        """The newest `limit` entries, newest first; only `action` if given."""
        sql = "SELECT id, t, who, role, action, target, detail FROM audit"
        args: tuple = ()
        if action:
            sql += " WHERE action = ?"
            args = (action,)
        rows = self._db.query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [r | {"detail": json.loads(r["detail"] or "{}")} for r in rows]
