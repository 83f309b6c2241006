"""Several `fota serve` workers on one PostgreSQL registry and one external broker (docs/DEPLOY.md).

What the workers share, and who decides what (PostgreSQL's locks, nothing of our own):

- campaigns move in one worker at a time: `CampaignLock` is an advisory lock of the database
  (pg_try_advisory_xact_lock for the ticker, which skips a tick another worker is making; the blocking
  form for operator actions). A worker that dies mid-tick loses the lock with its connection, and
  the next tick elsewhere finishes what it left (an offer recorded but not yet noted in the campaign
  is adopted and published again: CampaignRunner's orphan rule).
- packages: `SharedPackageStore` keeps each package's bytes in the database too, so a worker that
  never saw the upload loads it into its own store the first time a device asks for it.
- reports: every worker receives them, one takes each (host_tools/server/identity.py).
- chunk requests: a shared subscription, one worker each (host_tools/server/mqtt_service.py).

    store = SharedPackageStore(data_dir / "packages", registry.db)
    lock = CampaignLock(registry.db)
    with lock.attempt() as mine:          # the ticker: skip if another worker is at it
        if mine: runner.tick()
    with lock:                            # an operator action: wait for it
        runner.pause("r42")
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host_tools.image.keys import PublicKey
from host_tools.image.package import Package, PackageError
from host_tools.server.packages import PackageStore

CAMPAIGN_LOCK = "fota:campaigns"  # the advisory lock's name: campaigns move one worker at a time

SCHEMA = {
    "sqlite": "CREATE TABLE IF NOT EXISTS package_files (id TEXT PRIMARY KEY, data BLOB)",
    "postgresql": "CREATE TABLE IF NOT EXISTS package_files (id TEXT PRIMARY KEY, data BYTEA)",
}


class CampaignLock:
    """Campaign changes one at a time: among this process's threads and among all workers of the database."""

    def __init__(self, db) -> None:
        self.db = db
        self._thread = threading.Lock()
        self._held: list = []

    def __enter__(self) -> CampaignLock:
        self._thread.acquire()
        try:
            cm = self.db.lock(CAMPAIGN_LOCK)
            cm.__enter__()
        except BaseException:
            self._thread.release()
            raise
        self._held.append(cm)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._held.pop().__exit__(*exc)
        finally:
            self._thread.release()

    @contextmanager
    def attempt(self) -> Iterator[bool]:
        """True for the block if no thread and no other worker is moving campaigns; False at once otherwise."""
        if not self._thread.acquire(blocking=False):
            yield False
            return
        try:
            with self.db.try_lock(CAMPAIGN_LOCK) as mine:
                yield mine
        finally:
            self._thread.release()


class SharedPackageStore(PackageStore):
    """A PackageStore whose packages are also kept in the registry's database, for the other workers."""

    def __init__(self, root: Path, db, *, trusted: list[PublicKey] | None = None) -> None:
        super().__init__(root, trusted=trusted)
        self.db = db
        db.script(SCHEMA[db.kind])

    def add(self, data: bytes) -> tuple[str, Package]:
        pid, package = super().add(data)
        self.db.execute("INSERT INTO package_files (id, data) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (pid, data))
        return pid, package

    def load(self, pid: str) -> tuple[Package, int]:
        if not self.path(pid).exists():
            rows = self.db.query("SELECT data FROM package_files WHERE id = ?", (pid,))
            if not rows:
                raise PackageError(f"no package {pid} in the store nor in the database")
            super().add(bytes(rows[0]["data"]))  # checked again as any upload; written atomically
        return super().load(pid)
