"""The virtual board as a chip looks from its UART: boot, filesystem, identity, console, Ctrl-C, one supervisor.

The checks of shared/reference/esp32-board-front-end.md ("Checks a faithful virtual board should pass")
that need no esptool; docs/BOARD.md lists what is faithful and what is not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.sim.runtime import BoardRun, BoardRunError
from simkit import LARGEST_BLOCK, app_image, new_board

pytestmark = pytest.mark.fw
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
BANNER = re.compile(r"MicroPython v1\.28\.0 on \d{4}-\d\d-\d\d; Generic ESP32 module with ESP32\r\nType \"help\(\)\" for more information\.\r\n>>> ")
# feature_check/target_info.py of MicroPython's run-tests, in one line
TARGET_INFO = (
    "import sys; a=[None,'x86','x64','armv6','armv6m','armv7m','armv7em','armv7emsp','armv7emdp','xtensa','xtensawin',"
    "'rv32imc','rv64imc'][(sys.implementation._mpy>>10)&15]; print(sys.platform, a, sys.implementation._mpy>>16, "
    "sys.implementation._build, sys.implementation._thread)"
)


def mpremote(tty: Path, *args: str) -> str:
    out = subprocess.run([MPREMOTE, "connect", str(tty), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_first_boot_makes_the_filesystem_and_boot_py_once(tmp_path):
    board = new_board(tmp_path, "first", image=app_image("1.0.0"))
    with BoardRun(board) as run:
        run.wait_idle()
        assert mpremote(board.repl_link, "exec", "import os; print(os.listdir('/'))").strip() == "['boot.py']"
    assert run.transcript().count("Performing initial setup\r\n") == 1
    assert board.read_file("boot.py").startswith(b"# This file is executed on every boot")
    vfs = board.fs_partition()
    assert run.flash.ops_in(vfs.offset, vfs.offset + vfs.size) > 0  # mkfs and boot.py were flash writes
    with BoardRun(board) as again:
        again.wait_idle()
    assert "Performing initial setup" not in again.transcript()


def test_garbage_in_the_vfs_partition_is_reported_as_corrupted(tmp_path):
    board = new_board(tmp_path, "bad", image=app_image("1.0.0"))
    vfs = board.fs_partition()
    with open(board.flash_path, "r+b") as f:
        f.seek(vfs.offset)
        f.write(b"\x00not a filesystem")
    with BoardRun(board) as run:
        run.wait_for("The filesystem appears to be corrupted.", timeout=30)
        run.wait_for("perform\r\nfactory reprogramming", timeout=5)


def test_console_is_cooked_and_says_esp32(tmp_path):
    main = "import sys, os, io\nprint(sys.platform)\nprint(os.uname().sysname, os.uname().release)\nprint(sorted(os.listdir('/')))\n"
    board = new_board(tmp_path, "id", image=app_image("1.0.0"), files={"main.py": main})
    with BoardRun(board) as run:
        run.wait_idle()
        run.wait_for(">>> ")
        assert mpremote(board.repl_link, "exec", TARGET_INFO).strip() == "esp32 xtensawin 0 ESP32_GENERIC GIL"
        version = mpremote(board.repl_link, "exec", "import sys; print(sys.version)").strip()
    out = run.transcript()
    assert BANNER.search(out), out
    assert "esp32\r\nesp32 1.28.0\r\n['boot.py', 'main.py']\r\n" in out
    assert re.search(r"(?<!\r)\n", out) is None, "a line ended in a bare LF"
    assert re.fullmatch(r"3\.4\.0; MicroPython v1\.28\.0 on \d{4}-\d\d-\d\d", version)


def test_buffered_writer_writes_whole_chunks_only(tmp_path):
    code = (
        "import io\n"
        "class S:\n def __init__(self): self.w = []\n def write(self, b): self.w.append(bytes(b))\n"
        "s = S(); w = io.BufferedWriter(s, 4); w.write(b'abcdefghij'); print(s.w); w.flush(); print(s.w)"
    )
    board = new_board(tmp_path, "bw", image=app_image("1.0.0"))
    with BoardRun(board) as run:
        run.wait_idle()
        out = mpremote(board.repl_link, "exec", code)
    assert out.splitlines() == ["[b'abcd', b'efgh']", "[b'abcd', b'efgh', b'ij']"]


def test_traceback_names_chip_files_not_host_paths(tmp_path):
    board = new_board(tmp_path, "tb", image=app_image("1.0.0"), files={"main.py": "import esp32\n\nesp32.Partition('nope')\n"})
    with BoardRun(board) as run:
        run.wait_idle()
    out = run.transcript()
    assert 'Traceback (most recent call last):\r\n  File "main.py", line 3, in <module>\r\n' in out
    assert str(Path(__file__).parents[1]) not in out and "<string>" not in out and "_simboot" not in out


def test_ctrl_c_during_start_up_is_ignored(tmp_path):
    board = new_board(tmp_path, "cc", image=app_image("1.0.0"), files={"main.py": "print('main ran')\n"})
    with BoardRun(board) as run:
        fd = os.open(board.repl_link, os.O_RDWR | os.O_NOCTTY)
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not any(e.kind == "idle" for e in run.events):
                os.write(fd, b"\x03")
                time.sleep(0.002)
            run.wait_idle()
        finally:
            os.close(fd)
    kinds = [e.kind for e in run.events]
    assert "panic" not in kinds and kinds.count("boot") == 1, run.transcript()


def test_app_code_never_runs_on_the_host_for_heap_accounting(tmp_path):
    image = app_image("1.0.0", (("loud.py", "print('LOUD AT IMPORT')\nraise SystemExit\n"),))
    board = new_board(tmp_path, "loud", image=image, files={"main.py": "print('main ran')\n"})
    with BoardRun(board) as run:
        run.wait_idle()
    assert "main ran" in run.transcript() and "LOUD" not in run.transcript()
    assert not any(e.kind == "panic" for e in run.events)


HEAP_MAIN = r"""
import gc, os
""" + LARGEST_BLOCK + r"""
names = ["/none%d.mpy" % i for i in range(10)]
gc.collect()
a = gc.mem_alloc()
for name in names:
    try:
        os.stat(name)
    except OSError:
        pass
lookups = gc.mem_alloc() - a
gc.collect()
start = (gc.mem_free(), largest())
import app, json, time
from fota.agent import Agent, Identity
from fota.link.source import FileSource, pump
import trusted_keys
gc.collect()
print("HEAP", lookups, *start, gc.mem_free(), largest())
"""


def test_the_board_leaves_the_application_one_heap_not_pieces(tmp_path):
    # The board's own start-up (flash driver, frozen modules, their names) leaves no garbage between the
    # application's objects: a file lookup on the flash filesystem allocates nothing (a chip's driver is C),
    # the free heap at main.py is one block, and after the agent's imports in a 64k board most of it still is.
    from simkit import fw_image

    board = new_board(tmp_path, "heap", image=fw_image("1.0.0"), files={"main.py": HEAP_MAIN})
    with BoardRun(board, heapsize="64k") as run:
        run.wait_for("HEAP ", 60)
        run.wait_idle()
    lookups, free0, big0, free1, big1 = map(int, re.search(r"HEAP (.*)\r\n", run.transcript()).group(1).split())
    assert lookups < 3000, lookups  # 10 failed lookups: their OSErrors (~1.6 KB); ~12 KB when the bus allocated per read
    assert big0 > 0.85 * free0, (free0, big0)
    assert big1 > 0.6 * free1 and big1 > 24 * 1024, (free1, big1)  # 3-6 KB before the fix


def test_a_second_supervisor_on_one_board_is_refused(tmp_path):
    board = new_board(tmp_path, "lock", image=app_image("1.0.0"))
    with BoardRun(board) as run:
        run.wait_idle()
        with pytest.raises(BoardRunError, match="running already"):
            BoardRun(board)
        assert os.path.realpath(board.repl_link) == run.repl_path  # the running board's REPL link is untouched
    with BoardRun(board) as again:  # free again once stopped
        again.wait_idle()
