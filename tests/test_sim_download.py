"""Download mode of a running virtual board: the real esptool and mpremote against BoardRun.

esptool reaches the ROM loader on the board's REPL pty (no DTR/RTS: the board is put in download mode
by the test, as a button would) or on its RFC 2217 port (esptool's own reset sequence); `fota flash
--port sim:NAME` runs host_tools.device.flashing.flash_image, the USB board's code path, either way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import serial

from host_tools.cli import main
from host_tools.sim.flash import PowerPlan
from host_tools.sim.romloader import DOWNLOAD_BOOT_TEXT
from host_tools.sim.runtime import BoardRun
from simkit import app_image, new_board

pytestmark = [pytest.mark.fw, pytest.mark.timeout(120)]

BIN = Path(sys.executable).parent
MAIN_PY = {"main.py": "import app\nprint('app', app.VERSION)\n"}
APP_AT = 0x10000


def esptool(cwd: Path, port: str, *args: str, check: bool = True) -> str:
    cmd = [str(BIN / "esptool"), "--port", port, "--before", "no-reset", "--after", "no-reset", *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0 or not check, out
    return out


def test_esptool_on_the_pty_of_a_board_in_download_mode_then_a_reset_boots_the_app(tmp_path):
    board = new_board(tmp_path, "dl", files=MAIN_PY)
    app = app_image("2.0")
    (tmp_path / "app.bin").write_bytes(app)
    with BoardRun(board, download=True) as run:
        run.wait_event("download", timeout=10)
        assert run.state == "download" and run.pid is None  # the ROM runs, no interpreter
        assert DOWNLOAD_BOOT_TEXT.decode() in run.transcript()
        out = esptool(tmp_path, run.repl_path, "write-flash", f"0x{APP_AT:x}", "app.bin")
        assert "Hash of data verified." in out
        esptool(tmp_path, run.repl_path, "read-flash", f"0x{APP_AT:x}", str(len(app)), "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == app
        assert run.flash.ops == 1 and run.flash.faults == []  # the stub's write (blank flash: no erase), on the board's Flash
        run.reset()  # EN pressed with IO0 released
        run.wait_for("app 2.0")
        run.wait_idle()
        # mpremote on the same pty after download mode
        result = subprocess.run([str(BIN / "mpremote"), "connect", run.repl_path, "exec", "print(6 * 7)"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "42" in result.stdout, result.stdout + result.stderr
        run.reset(download=True)
        run.wait_event("download", count=2)
        assert run.pid is None and "Chip type:" in esptool(tmp_path, run.repl_path, "chip-id")
    assert not board.rfc2217_file.exists() and not board.repl_link.exists()


def test_fota_flash_on_a_stopped_board_runs_esptool_and_writes_what_a_host_write_did(tmp_path, capsys):
    board = new_board(tmp_path, "off", image=app_image("1.0"), files=MAIN_PY)
    reference = new_board(tmp_path, "ref", image=app_image("1.0"), files=MAIN_PY)
    image = tmp_path / "v2.bin"
    image.write_bytes(app_image("2.0"))
    with BoardRun(board) as run:  # a first boot: otadata written, so the erase of otadata matters
        run.wait_idle()
    reference.flash_app(image.read_bytes())
    assert main(["--home", str(tmp_path), "flash", str(image), "--port", "sim:off"]) == 0
    out = capsys.readouterr().out
    assert "Chip was NOT reset" in out and "Hash of data verified." in out and "Flash memory region erased" in out
    assert board.flash_path.read_bytes() == reference.flash_path.read_bytes()
    with BoardRun(board) as run:
        run.wait_for("app 2.0")
        assert run.boots()[0].detail == "ota_0 cause=1"


@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")  # pyserial 3.5 rfc2217 client
def test_fota_flash_on_a_running_board_resets_it_through_rfc2217(tmp_path, capsys):
    """esptool's reset sequences (esptool.reset) on the board's RFC 2217 lines put it in the ROM and back; esptool
    itself talks on the pty (through RFC 2217 pyserial's client makes it ~55 s: host_tools/sim/ports.py)."""
    board = new_board(tmp_path, "on", image=app_image("1.0"), files=MAIN_PY)
    image = tmp_path / "v2.bin"
    image.write_bytes(app_image("2.0"))
    with BoardRun(board) as run:
        run.wait_for("app 1.0")
        assert board.rfc2217_file.read_text().strip() == run.rfc2217_url
        assert main(["--home", str(tmp_path), "flash", str(image), "--port", "sim:on"]) == 0
        out = capsys.readouterr().out
        assert "Hash of data verified." in out
        assert f"on sim:on (reset into download mode through {run.rfc2217_url})" in out
        run.wait_for("app 2.0")
        kinds = [e.kind for e in run.events]
        assert kinds.count("download") == 1  # one reset into the ROM for the three esptool runs, one back out
        assert run.state == "running"


@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")  # pyserial 3.5 rfc2217 client
def test_opening_the_rfc2217_port_does_not_reset_the_board_and_it_is_a_console(tmp_path):
    board = new_board(tmp_path, "tcp", image=app_image("1.0"))
    with BoardRun(board) as run:
        run.wait_idle()
        boots = len(run.boots())
        with serial.serial_for_url(run.rfc2217_url, baudrate=115200, timeout=5) as port:  # pyserial asserts DTR, then RTS
            port.write(b"print(6 * 7)\r\n")
            assert b"42" in port.read_until(b"42")
        assert len(run.boots()) == boots and not any(e.kind == "download" for e in run.events)
        run.reset()
        run.wait_idle(count=2)  # the port's client closed (both lines dropped together): nothing moved


def test_power_cut_during_an_esptool_write_leaves_the_board_off_and_a_later_flash_completes(tmp_path, capsys):
    (tmp_path / "esptool.cfg").write_text("[esptool]\ntimeout = 0.5\nerase_write_timeout_per_mb = 1\n")  # fail fast
    board = new_board(tmp_path, "cut", files=MAIN_PY)
    image = tmp_path / "v2.bin"
    image.write_bytes(app_image("2.0"))
    with BoardRun(board, download=True, plan=PowerPlan(cut_before=1, tear=True, seed=1)) as run:
        run.wait_event("download", timeout=10)
        out = esptool(tmp_path, run.repl_path, "write-flash", f"0x{APP_AT:x}", image.name, check=False)
        assert "Hash of data verified." not in out
        run.wait_event("power_loss")
        assert run.state == "off" and "power lost before flash operation 1" in run.transcript()
        assert board.flash_path.read_bytes()[APP_AT : APP_AT + 384] != image.read_bytes()[:384]  # torn
        assert "Failed to connect" in esptool(tmp_path, run.repl_path, "--connect-attempts", "1", "chip-id", check=False)  # no power: no answer
    assert main(["--home", str(tmp_path), "flash", str(image), "--port", "sim:cut"]) == 0
    assert "Hash of data verified." in capsys.readouterr().out
    with BoardRun(board) as run:
        run.wait_for("app 2.0")
