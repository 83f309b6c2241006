"""The registry's storage: SQLite by default, PostgreSQL for a fleet that outgrows one machine.

One small interface over both, so the registry's SQL is written once (the
portable subset: `ON CONFLICT ... DO UPDATE/NOTHING`, `RETURNING id`, `?` params):

    db = open_database(Path("data/registry.sqlite"))          # or "postgresql://user@host/fota"
    db.script(SCHEMA)
    db.execute("UPDATE devices SET version = ? WHERE id = ?", ("2.0.0", "a1b2"))
    db.execute_many("UPDATE devices SET version = ? WHERE id = ?", [("2.0.0", "a1b2"), ("2.0.0", "c3d4")])
    db.execute_values("INSERT INTO events (device, event)", [("a1b2", "x"), ("c3d4", "y")])   # one statement
    rows = db.query("SELECT * FROM devices")                 # list of dicts
    new_id = db.insert_id("INSERT INTO offers (...) VALUES (?, ?) RETURNING id", (...))
    rows = db.returning_many("UPDATE offers SET status = ? WHERE id = ? RETURNING device", [("DONE", 7)])  # [[{...}]]

Several `fota serve` workers share one PostgreSQL database (docs/DEPLOY.md); what they must not do
at once is decided by PostgreSQL's own locks, never by a protocol of ours:

    with db.transaction():                                   # all or nothing, on both
        with db.atomic(): ...                                # joins the transaction open (else makes one)
        db.query("SELECT counter FROM identities WHERE id = ?" + db.for_update, ("a1b2",))   # row lock
    with db.try_lock("fota:campaigns") as mine:              # an advisory lock: False if another worker holds it
        if mine: ...

A worker that dies holding either loses it with its connection: PostgreSQL rolls its transaction back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from host_tools.errors import FotaError


class DatabaseError(FotaError):
    """The registry's database cannot be opened."""


SCHEMA_LOCK = "fota:schema"  # PostgreSQL: one worker at a time creates or alters tables
_NAMED: dict[tuple[str, str], threading.Lock] = {}
_NAMED_GUARD = threading.Lock()


def values_statements(head: str, rows: list[tuple], tail: str = "", *, numbered: bool = False,
                      per_statement: int = 500) -> Iterator[tuple[str, tuple]]:
    """`head VALUES (?,..),(?,..) tail` statements with their arguments, for `rows` (all of one width): one
    statement for many rows, where executemany would make one each (their parameters: under both databases'
    limits, 32766 for SQLite, 65535 for PostgreSQL, at 500 rows of up to 60 columns). `numbered`: $1, $2, ...
    (PostgreSQL's own placeholders, which psycopg's raw cursor sends as they are, without parsing the text)."""
    for start in range(0, len(rows), per_statement):
        part = rows[start:start + per_statement]
        yield f"{head} VALUES {_value_groups(len(part), len(part[0]), numbered)} {tail}", tuple(v for row in part for v in row)


@lru_cache(maxsize=64)
def _value_groups(count: int, width: int, numbered: bool) -> str:
    if not numbered:
        return ",".join(["(" + ",".join("?" * width) + ")"] * count)
    return ",".join("(" + ",".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(count))


def _named_lock(path: str, key: str) -> threading.Lock:
    """The process's lock called `key` for the SQLite file at `path` (every handle on the file shares it)."""
    with _NAMED_GUARD:
        return _NAMED.setdefault((path, key), threading.Lock())


class SqliteDatabase:
    """One process owns the file: its threads take turns; a statement commits on its own, or with the
    others of the transaction() it runs in."""

    kind = "sqlite"
    for_update = ""  # no row locks in SQLite; the process-wide lock serialises a transaction() instead

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        # write-ahead log: a commit appends to one file and syncs it once (the rollback journal's create,
        # sync, write, sync, delete cost most of a report's CPU); still synchronous=FULL, durable at commit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.RLock()
        self._depth = 0  # transaction() blocks open on the thread holding the lock
        self._path = str(path.resolve())

    def script(self, sql: str) -> None:
        with self._lock, self._db:
            self._db.executescript(sql)

    def _run(self, sql: str, args: tuple) -> sqlite3.Cursor:
        with self._lock:
            if self._depth:
                return self._db.execute(sql, args)  # committed (or rolled back) with its transaction
            with self._db:
                return self._db.execute(sql, args)

    def execute(self, sql: str, args: tuple = ()) -> int:
        """Run one statement; the number of rows it changed."""
        return self._run(sql, args).rowcount

    def execute_many(self, sql: str, rows: list[tuple]) -> None:
        """Run one statement for each tuple of arguments (none: nothing), as one transaction."""
        if rows:
            with self.atomic():
                self._db.executemany(sql, rows)

    def insert_id(self, sql: str, args: tuple = ()) -> int:
        with self.transaction():  # RETURNING's row is read before the commit
            return int(self._db.execute(sql, args).fetchone()[0])

    def execute_values(self, head: str, rows: list[tuple], tail: str = "") -> None:
        """INSERT many rows in few statements (values_statements), as one transaction; a row twice under an
        `ON CONFLICT ... DO UPDATE` tail is an error (PostgreSQL): pass each key once."""
        with self.atomic():
            for sql, args in values_statements(head, rows, tail):
                self.execute(sql, args)

    def returning_many(self, sql: str, rows: list[tuple]) -> list[list[dict]]:
        """Run a statement that changes rows and says which (`... RETURNING`) for each tuple of arguments, in
        order, as one transaction: the rows of each, as dicts."""
        with self.atomic():
            return [[dict(r) for r in self._db.execute(sql, args).fetchall()] for args in rows]

    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The statements inside commit together, or not at all if the block raises (or the process dies);
        no other thread of this process touches the database meanwhile. An inner block is a savepoint,
        as in PostgreSQL (psycopg): if it raises, only its own statements are undone."""
        with self._lock:
            depth = self._depth
            self._db.execute(f"SAVEPOINT t{depth}" if depth else "BEGIN")
            self._depth += 1
            try:
                yield
            except BaseException:
                if depth:
                    self._db.execute(f"ROLLBACK TO t{depth}")
                    self._db.execute(f"RELEASE t{depth}")
                else:
                    self._db.rollback()
                raise
            else:
                if depth:
                    self._db.execute(f"RELEASE t{depth}")
                else:
                    self._db.commit()
            finally:
                self._depth = depth

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """The transaction this thread is in, else a new one: all or nothing, without a savepoint of its own."""
        with self._lock:
            if self._depth:
                yield
                return
            with self.transaction():
                yield

    @contextmanager
    def try_lock(self, key: str) -> Iterator[bool]:
        """True if this process holds `key` for the block (one process owns an SQLite file)."""
        lock = _named_lock(self._path, key)
        mine = lock.acquire(blocking=False)
        try:
            yield mine
        finally:
            if mine:
                lock.release()

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold `key` for the block, waiting for whoever holds it."""
        with _named_lock(self._path, key):
            yield

    def close(self) -> None:
        self._db.close()


class PostgresDatabase:
    """One connection for statements (threads take turns) and one for advisory locks, opened when first asked."""

    kind = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise DatabaseError("PostgreSQL needs psycopg", hint="pip install 'psycopg[binary]'") from exc
        self._url = url
        try:
            self._db = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot connect to {url}: {exc}") from exc
        self._lock = threading.RLock()  # re-entrant: a transaction() holds it around the registry's own statements
        self._locks = None  # the advisory-lock connection (psycopg.Connection), opened on first use
        self._locks_mutex = threading.Lock()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def script(self, sql: str) -> None:
        """Schema statements, in one transaction under an advisory lock: workers that start at once on a
        fresh database otherwise race in the catalog (CREATE TABLE IF NOT EXISTS is not safe concurrently:
        UniqueViolation on pg_type, and that worker dies at start)."""
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (SCHEMA_LOCK,))
            for statement in filter(str.strip, sql.split(";")):
                self._db.execute(statement)

    # A statement outside transaction() commits on its own (the connection is in autocommit mode); inside
    # one, it is part of it. No transaction() of its own: inside another, that would be a savepoint, two
    # more round trips for every statement of a report.
    def execute(self, sql: str, args: tuple = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            return self._db.execute(self._sql(sql), args).rowcount

    def execute_many(self, sql: str, rows: list[tuple]) -> None:
        """Run one statement for each tuple of arguments (none: nothing), as one transaction, pipelined."""
        if rows:
            with self.atomic():
                self._db.cursor().executemany(self._sql(sql), rows)

    def insert_id(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            row = self._db.execute(self._sql(sql), args).fetchone()
            return int(next(iter(row.values())))

    def execute_values(self, head: str, rows: list[tuple], tail: str = "") -> None:
        """INSERT many rows in few statements (values_statements), as one transaction; a row twice under an
        `ON CONFLICT ... DO UPDATE` tail is an error (PostgreSQL): pass each key once. Numbered placeholders
        through a raw cursor: psycopg parses a long statement's text again at every call, not from its cache."""
        import psycopg

        with self.atomic():
            cur = psycopg.RawCursor(self._db)
            for sql, args in values_statements(head, rows, tail, numbered=True):
                cur.execute(sql, args)

    def returning_many(self, sql: str, rows: list[tuple]) -> list[list[dict]]:
        """Run a statement that changes rows and says which (`... RETURNING`) for each tuple of arguments, in
        order, as one transaction, pipelined: the rows of each, as dicts."""
        if not rows:
            return []
        with self.atomic():
            cur = self._db.cursor()
            cur.executemany(self._sql(sql), rows, returning=True)
            out = [cur.fetchall()]
            while cur.nextset():
                out.append(cur.fetchall())
            return out

    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return list(self._db.execute(self._sql(sql), args).fetchall())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The statements inside (this thread's) commit together or, if the block raises or the process dies,
        not at all; row locks taken inside (`SELECT ... FOR UPDATE`) are held until the end."""
        with self._lock, self._db.transaction():
            yield

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """The transaction this thread is in, else a new one: all or nothing, without a savepoint of its own."""
        from psycopg.pq import TransactionStatus

        with self._lock:  # held by a thread for its whole transaction(): a transaction open now is this thread's
            if self._db.info.transaction_status == TransactionStatus.INTRANS:
                yield
                return
            with self._db.transaction():
                yield

    @contextmanager
    def _advisory(self, key: str, wait: bool) -> Iterator[bool]:
        """A transaction-scoped advisory lock on the lock connection (released at its end, or when the
        connection dies with the process)."""
        import psycopg

        with self._locks_mutex:
            if self._locks is None or self._locks.closed:
                self._locks = psycopg.connect(self._url, autocommit=True)
            conn = self._locks
            with conn.transaction():
                fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
                row = conn.execute(f"SELECT {fn}(hashtextextended(%s, 0))", (key,)).fetchone()
                yield True if wait else bool(row[0])

    @contextmanager
    def try_lock(self, key: str) -> Iterator[bool]:
        """True if this worker holds `key` for the block; False at once if another worker does."""
        with self._advisory(key, wait=False) as mine:
            yield mine

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold `key` for the block, waiting for the worker that holds it."""
        with self._advisory(key, wait=True):
            yield

    def close(self) -> None:
        self._db.close()
        if self._locks is not None:
            self._locks.close()


def open_database(target: str | Path):
    """A PostgreSQL URL, or a path to an SQLite file."""
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(target)
    return SqliteDatabase(Path(target))
