"""The README's walkthrough, run as it stands: from an empty directory to a first OTA on a virtual board.

The block fenced as ```sh walkthrough in README.md runs in bash (`set -e`, an empty temporary
directory, FOTA_HOME inside it, the venv's `fota` on PATH), so the README cannot drift from what the
commands do. Its background jobs (fota serve, fota sim run) share the script's process group, which
the test ends with SIGTERM, as Ctrl-C or `kill %1 %2` would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MICROPYTHON, NO_MICROPYTHON

pytestmark = [pytest.mark.fw, pytest.mark.timeout(420),
              pytest.mark.skipif(MICROPYTHON is None, reason=NO_MICROPYTHON)]
README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough(text: str) -> str:
    """The one ```sh walkthrough block of the README."""
    blocks = re.findall(r"^```sh walkthrough\n(.*?)^```$", text, re.M | re.S)
    assert len(blocks) == 1, "README.md needs exactly one ```sh walkthrough block"
    return blocks[0]


def end_group(pgid: int, timeout: float = 30) -> None:
    """SIGTERM to the script's process group, then wait until it is empty (SIGKILL after `timeout`)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_the_walkthrough_block_is_the_whole_path():
    script = walkthrough(README.read_text())
    commands = [line.split("#")[0].strip() for line in script.splitlines()]
    for step in ("fota init", "fota keygen", "fota build", "fota sign", "fota sim create", "fota sim flash", "fota sim run",
                 "fota serve", "fota provision", "fota deploy"):
        assert any(c.startswith(step) for c in commands), step
    assert any("--follow" in c for c in commands if c.startswith("fota deploy"))


def test_the_readme_walkthrough_runs_from_an_empty_directory_to_a_first_ota(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = os.environ | {"FOTA_HOME": str(tmp_path / "home"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("FOTA_SERVER", "FOTA_TOKEN", "FOTA_DEBUG"):
        env.pop(name, None)
    proc = subprocess.Popen(["bash", "-e", "-c", walkthrough(README.read_text())], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        end_group(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"the walkthrough did not finish:\n{out}\n--- dev1.log:\n{_tail(work / 'dev1.log')}")
    finally:
        end_group(proc.pid)
    logs = f"\n--- serve.log:\n{_tail(work / 'serve.log')}\n--- dev1.log:\n{_tail(work / 'dev1.log')}"
    assert proc.returncode == 0, out + logs
    assert "dev1: SUCCEEDED" in out, out + logs
    row = next(line for line in out.splitlines()[::-1] if line.startswith("dev1 "))
    assert " 1.1.0 " in row and "SUCCEEDED" in row, out
    assert "fota: running 1.1.0" in (work / "dev1.log").read_text(), logs
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["app", "keys", "v1.bin", "v1.1.bin", "v1.1.fota", "serve.log", "dev1.log"])


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"
