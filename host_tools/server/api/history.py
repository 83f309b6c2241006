"""Version adoption over time: a row per change of the fleet's version counts, in the registry's database.

    history = VersionHistory(registry.db)
    history.sample(registry.devices())     # stores {"1.0.0": 7, "2.0.0": 3} if it differs from the last row
    history.series(since=t0)               # [{"t": ..., "counts": {...}}, ...] oldest first
"""

from __future__ import annotations

import json
import time
from collections import Counter

from host_tools.server.registry import SCHEMA_TYPES

SCHEMA = "CREATE TABLE IF NOT EXISTS version_history (id {serial}, t {real}, counts TEXT)"
MAX_POINTS = 500


def version_counts(devices: list[dict]) -> dict[str, int]:
    """Devices per reported version (devices that never reported one are left out)."""
    return dict(sorted(Counter(d["version"] for d in devices if d.get("version")).items()))


class VersionHistory:
    def __init__(self, db) -> None:
        self._db = db
        self._db.script(SCHEMA.format(**SCHEMA_TYPES[db.kind]))
        last = self._db.query("SELECT counts FROM version_history ORDER BY id DESC LIMIT 1")
        self._last = json.loads(last[0]["counts"]) if last else None

    def sample(self, devices: list[dict], now: float | None = None) -> bool:
        """Store the counts if they changed since the last sample; True if stored."""
        counts = version_counts(devices)
        if counts == self._last or not counts:
            return False
        self._db.execute("INSERT INTO version_history (t, counts) VALUES (?, ?)", (now or time.time(), json.dumps(counts)))
        self._last = counts
        return True

    def series(self, since: float = 0.0) -> list[dict]:
        """Samples since `since`, oldest first; thinned to MAX_POINTS (the last one always kept)."""
        rows = self._db.query("SELECT t, counts FROM version_history WHERE t >= ? ORDER BY id", (since,))
        step = max(1, -(-len(rows) // MAX_POINTS))
        kept = rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])
        return [{"t": r["t"], "counts": json.loads(r["counts"])} for r in kept]
