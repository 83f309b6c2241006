"""A throwaway PostgreSQL cluster for the registry tests, selected with FOTA_TEST_POSTGRES=1.

    FOTA_TEST_POSTGRES=1 .venv/bin/pytest tests/test_campaign.py tests/test_registry.py

initdb and postgres run as the `postgres` user when the tests run as root (PostgreSQL
refuses root). Each test gets a database of its own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

_counter = itertools.count()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server():
    if os.environ.get("FOTA_TEST_POSTGRES") != "1":
        pytest.skip("PostgreSQL registry tests: set FOTA_TEST_POSTGRES=1 to select them")
    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if not initdb:
        pytest.skip("no initdb: apt-get install postgresql")
    bindir = Path(initdb).parent
    root = Path(tempfile.mkdtemp(prefix="fota-pg-"))
    os.chmod(root, 0o777)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    from brokers import free_port

    port = free_port()
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    proc = subprocess.Popen(_as_postgres([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
                                          "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    for _ in range(100):
        try:
            psycopg.connect(url).close()
            break
        except psycopg.OperationalError:
            time.sleep(0.1)
    yield f"postgresql://postgres@127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_target(request, tmp_path):
    """Where a test's registry lives: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "registry.sqlite"
    base = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"fota_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"
