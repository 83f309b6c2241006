"""The registry's storage: SQLite by default, PostgreSQL for a fleet that outgrows one machine.

One small interface over both, so the registry's SQL is written once (the
portable subset: `ON CONFLICT ... DO UPDATE/NOTHING`, `RETURNING id`, `?` params):

    db = open_database(Path("data/registry.sqlite"))          # or "postgresql://user@host/fota"
    db.script(SCHEMA)
    db.execute("UPDATE devices SET version = ? WHERE id = ?", ("2.0.0", "a1b2"))
    rows = db.query("SELECT * FROM devices")                 # list of dicts
    new_id = db.insert_id("INSERT INTO offers (...) VALUES (?, ?) RETURNING id", (...))
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from host_tools.errors import FotaError


class DatabaseError(FotaError):
    """The registry's database cannot be opened."""


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def script(self, sql: str) -> None:
        with self._lock, self._db:
            self._db.executescript(sql)

    def execute(self, sql: str, args: tuple = ()) -> None:
        with self._lock, self._db:
            self._db.execute(sql, args)

    def insert_id(self, sql: str, args: tuple = ()) -> int:
        with self._lock, self._db:
            return int(self._db.execute(sql, args).fetchone()[0])

    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        self._db.close()


class PostgresDatabase:
    kind = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise DatabaseError("PostgreSQL needs psycopg", hint="pip install 'psycopg[binary]'") from exc
        try:
            self._db = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot connect to {url}: {exc}") from exc
        self._lock = threading.Lock()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def script(self, sql: str) -> None:
        with self._lock:
            for statement in filter(str.strip, sql.split(";")):
                self._db.execute(statement)

    def execute(self, sql: str, args: tuple = ()) -> None:
        with self._lock, self._db.transaction():
            self._db.execute(self._sql(sql), args)

    def insert_id(self, sql: str, args: tuple = ()) -> int:
        with self._lock, self._db.transaction():
            row = self._db.execute(self._sql(sql), args).fetchone()
            return int(next(iter(row.values())))

    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return list(self._db.execute(self._sql(sql), args).fetchall())

    def close(self) -> None:
        self._db.close()


def open_database(target: str | Path):
    """A PostgreSQL URL, or a path to an SQLite file."""
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(target)
    return SqliteDatabase(Path(target))
