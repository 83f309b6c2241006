"""esp32.NVS, esp32.idf_heap_info and check_esp_err's errors on a virtual board, as the ESP32 port has them.

Values and errors are those of ports/esp32/esp32_nvs.c and modesp32.c (MicroPython v1.28) over ESP-IDF;
the NVS log's on-flash layout is the board's own (docs/BOARD.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.sim.runtime import BoardRun
from simkit import app_image, new_board

pytestmark = pytest.mark.fw
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def mpremote(tty: Path, *args: str) -> str:
    out = subprocess.run([MPREMOTE, "connect", str(tty), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def lines(tty: Path, code: str) -> list[str]:
    return mpremote(tty, "exec", code).strip().splitlines()


WRITE = """
from esp32 import NVS
def err(f):
    try:
        f()
    except Exception as e:
        return type(e).__name__ + ' ' + str(e)
n = NVS('app')
n.set_i32('count', -7)
n.set_blob('blob', b'xyz')
n.commit()
n.set_i32('uncommitted', 1)
print(n.get_i32('uncommitted'))
print(err(lambda: n.get_i32('blob')))
print(err(lambda: n.get_blob('blob', bytearray(2))))
print(err(lambda: n.set_i32('k' * 16, 1)))
n.set_i32('k' * 15, 1)
print(err(lambda: NVS('n' * 16)))
print(err(lambda: n.set_i32('big', 2 ** 31)))
print(err(lambda: n.erase_key('none')))
print(err(lambda: NVS('other').get_i32('count')))
print(n)
"""
READ = """
from esp32 import NVS
n = NVS('app')
b = bytearray(5)
print(n.get_i32('count'), n.get_blob('blob', b), b)
try:
    n.get_i32('uncommitted')
except OSError as e:
    print(e)
"""
AFTER = ["-7 3 bytearray(b'xyz\\x00\\x00')", "(-4354, 'ESP_ERR_NVS_NOT_FOUND')"]


def test_nvs_values_errors_and_commit_survive_reset_and_power_on(tmp_path):
    board = new_board(tmp_path, "nvs", image=app_image("1.0.0"))
    with BoardRun(board) as run:
        run.wait_idle()
        assert lines(board.repl_link, WRITE) == [
            "1",
            "OSError (-4354, 'ESP_ERR_NVS_NOT_FOUND')",
            "OSError (-4364, 'ESP_ERR_NVS_INVALID_LENGTH')",
            "OSError (-4361, 'ESP_ERR_NVS_KEY_TOO_LONG')",
            "OSError (-4361, 'ESP_ERR_NVS_KEY_TOO_LONG')",
            "OverflowError overflow converting long int to machine word",
            "OSError (-4354, 'ESP_ERR_NVS_NOT_FOUND')",
            "OSError (-4354, 'ESP_ERR_NVS_NOT_FOUND')",
            "<NVS namespace>",
        ]
        mpremote(board.repl_link, "soft-reset")
        assert lines(board.repl_link, READ) == AFTER  # the uncommitted value went with the reset
    with BoardRun(board) as again:  # power on again: the committed values are in the nvs partition
        again.wait_idle()
        assert lines(board.repl_link, READ) == AFTER
        # erase, commit, and a full log compacts instead of failing
        out = lines(
            board.repl_link,
            "from esp32 import NVS\nn = NVS('app')\nn.erase_key('count'); n.commit()\n"
            "for i in range(400):\n    n.set_blob('big', bytes(200)); n.commit()\n"
            "try:\n    n.get_i32('count')\nexcept OSError as e:\n    print(e)\nprint(n.get_blob('big', bytearray(200)))",
        )
        assert out == ["(-4354, 'ESP_ERR_NVS_NOT_FOUND')", "200"]
    with BoardRun(board) as third:
        third.wait_idle()
        assert lines(board.repl_link, "from esp32 import NVS\nprint(NVS('app').get_blob('blob', bytearray(3)))") == ["3"]


def test_idf_heap_info_is_regions_of_four_figures(tmp_path):
    board = new_board(tmp_path, "heap", image=app_image("1.0.0"))
    with BoardRun(board) as run:
        run.wait_idle()
        out = lines(
            board.repl_link,
            "import esp32\nfor cap in (esp32.HEAP_DATA, esp32.HEAP_EXEC):\n    r = esp32.idf_heap_info(cap)\n"
            "    print(len(r) >= 3, all(len(t) == 4 and 0 < t[0] and max(t[1:]) <= t[0] for t in r))\n"
            "print(esp32.idf_heap_info(-1), esp32.HEAP_DATA, esp32.HEAP_EXEC)",
        )
    assert out == ["True True", "True True", "[] 4 1"]


def test_esp_errors_carry_their_name_and_heap_locked_ones_do_not(tmp_path):
    board = new_board(tmp_path, "err", image=app_image("1.0.0"))
    code = (
        "import esp32, micropython\np = esp32.Partition.find(type=esp32.Partition.TYPE_DATA)[0]\n"
        "def go():\n    try:\n        p.set_boot()\n    except OSError as e:\n        return e\n"
        "print('A', go())\nmicropython.heap_lock()\nx = go()\nmicropython.heap_unlock()\nprint('B', x)\n"
        "micropython.alloc_emergency_exception_buf(256)\nmicropython.heap_lock()\nx = go()\nmicropython.heap_unlock()\n"
        "print('C', x)"
    )
    with BoardRun(board) as run:
        run.wait_idle()
        out = [line for line in lines(board.repl_link, code) if line[:1] in "ABC"]
    assert out == ["A (-5379, 'ESP_ERR_OTA_VALIDATE_FAILED')", "B ", "C -5379"]
