"""A throwaway PostgreSQL cluster for the registry, campaign and multi-worker tests (on by default).

    .venv/bin/pytest tests/test_campaign.py tests/test_registry.py    # each test twice: SQLite, PostgreSQL
    FOTA_TEST_POSTGRES=0 .venv/bin/pytest ...                           # SQLite only

One cluster per session (initdb + postgres on a free loopback port, fsync off, in a temporary
directory; about 2 s), a fresh database per test. PostgreSQL refuses to run as root: as root,
initdb and postgres run as the `postgres` user (Debian's package makes it), else as `nobody`, in
a directory that user owns. The binaries come from PATH or Debian's /usr/lib/postgresql/<major>/bin
(`make system-deps` installs the `postgresql` package); without them the PostgreSQL half is
skipped with a message that says so.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_counter = itertools.count()


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are: PATH first, then the newest Debian major version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    majors = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return majors[-1].parent if majors else None


def _run_as() -> str | None:
    """The unprivileged user the cluster runs as when we are root (None: we are not root)."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    raise RuntimeError("running as root with neither a postgres nor a nobody user: PostgreSQL cannot run")


def _as(user: str | None, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@contextmanager
def throwaway_postgres(bindir: Path) -> Iterator[str]:
    """A cluster from `bindir` for the block; its base URL (postgresql://postgres@127.0.0.1:PORT). Benches use it too."""
    import psycopg

    from brokers import free_port

    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="fota-pg-"))
    if user:
        shutil.chown(root, user)
    data = root / "data"
    port = free_port()
    init = subprocess.run(_as(user, [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                     "--no-sync", "-E", "UTF8", "--locale=C"]), capture_output=True, text=True)
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
    log = open(root / "postgres.log", "w")
    proc = subprocess.Popen(_as(user, [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
                                       "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                                       "-c", "full_page_writes=off", "-c", "max_connections=200"]),
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"{base}/postgres", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {(root / 'postgres.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()  # smart shutdown: SIGTERM; then SIGKILL if it hangs
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """The base URL (postgresql://postgres@127.0.0.1:PORT) of a cluster that lives for the session."""
    if os.environ.get("FOTA_TEST_POSTGRES") == "0":
        pytest.skip("PostgreSQL tests switched off (FOTA_TEST_POSTGRES=0)")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (initdb on PATH or /usr/lib/postgresql/*/bin): "
                    "make system-deps installs them (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (pip install -e '.[test]')")
    with throwaway_postgres(bindir) as base:
        yield base


def fresh_database(base: str) -> str:
    """A new, empty database on the session's cluster; its URL."""
    import psycopg

    name = f"fota_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.fixture
def postgres_database(postgres_server) -> str:
    """The URL of a fresh database for this test."""
    return fresh_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_target(request, tmp_path):
    """Where a test's registry lives: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "registry.sqlite"
    return fresh_database(request.getfixturevalue("postgres_server"))
