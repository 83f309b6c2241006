"""The virtual board as a whole: REPL over a pty, resets, watchdog, link, power cuts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.esp import espidf
from host_tools.sim.flash import PowerPlan
from host_tools.sim.runtime import BoardRun
from simkit import app_image, new_board

pytestmark = pytest.mark.fw
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def mpremote(tty: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MPREMOTE, "connect", str(tty), *args], capture_output=True, text=True, timeout=60)


def test_mpremote_execs_runs_and_copies_through_the_pty(tmp_path):
    board = new_board(tmp_path, "mp", image=app_image("1.4.0"), files={"main.py": "print('main ran')\n"})
    script = tmp_path / "probe.py"
    script.write_text("import esp32\nprint('slot', esp32.Partition(esp32.Partition.RUNNING).info()[4])\n")
    with BoardRun(board) as run:
        run.wait_idle()
        out = mpremote(board.repl_link, "exec", "import app, machine; print('v', app.VERSION, machine.unique_id().hex())")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"v 1.4.0 {board.config['uid']}"
        assert mpremote(board.repl_link, "run", str(script)).stdout.strip() == "slot ota_0"
        local = tmp_path / "cfg.json"
        local.write_text('{"k": 1}')
        assert mpremote(board.repl_link, "fs", "cp", str(local), ":cfg.json").returncode == 0
        assert board.read_file("cfg.json").decode() == '{"k": 1}'
        assert mpremote(board.repl_link, "soft-reset").returncode == 0
        assert mpremote(board.repl_link, "resume", "exec", "print(open('cfg.json').read())").stdout.strip() == '{"k": 1}'
    # a soft reset reruns no bootloader: only the power-on boot
    assert [e.kind for e in run.events].count("boot") == 1
    assert [e.kind for e in run.events].count("soft_reset") >= 3


def test_uncaught_exception_in_main_leaves_the_board_at_its_repl(tmp_path):
    board = new_board(tmp_path, "exc", image=app_image("1.0.0"), files={"main.py": "raise ValueError('boom')\n"})
    with BoardRun(board) as run:
        run.wait_idle()
        run.wait_for(">>> ")
        out = mpremote(board.repl_link, "resume", "exec", "print('still alive')")
    assert "ValueError: boom" in run.transcript()
    assert out.stdout.strip() == "still alive"
    assert [e.kind for e in run.events if e.kind in ("boot", "reset", "panic")] == ["boot"]


WDT_MAIN = """
import machine, time
print("CAUSE", machine.reset_cause())
if machine.reset_cause() != machine.WDT_RESET:
    wdt = machine.WDT(timeout=300)
    for _ in range(5):
        time.sleep_ms(100)
        wdt.feed()
    print("FED OK; now hanging")
    while True:
        time.sleep_ms(50)
"""


def test_missed_watchdog_feed_resets_the_board(tmp_path):
    board = new_board(tmp_path, "wdt", image=app_image("1.0.0"), files={"main.py": WDT_MAIN})
    with BoardRun(board) as run:
        run.wait_idle(timeout=30)
    out = run.transcript()
    assert "CAUSE 1" in out and "FED OK" in out and "CAUSE 3" in out
    assert [e.kind for e in run.events].count("wdt") == 1
    assert [e.kind for e in run.events].count("boot") == 2


def test_watchdog_reset_rolls_back_a_pending_image(tmp_path):
    # v2 hangs in its first boot: the watchdog resets, the bootloader rolls back to v1.
    hang = "import app, machine, time\nprint('RUN', app.VERSION)\nif app.VERSION == '2.0.0':\n    machine.WDT(timeout=200)\n    while True:\n        time.sleep_ms(20)\n"
    install = (
        "import esp32, machine\n"
        "t = esp32.Partition(esp32.Partition.RUNNING).get_next_update()\n"
        "d = open('v2.bin', 'rb').read()\n"
        "t.writeblocks(0, d + b'\\xff' * (-len(d) % 4096))\n"
        "t.set_boot()\n"
        "open('installed', 'w').close()\n"
        "machine.reset()\n"
    )
    main = hang + "import os\ntry:\n    os.stat('installed')\nexcept OSError:\n" + "".join("    " + line + "\n" for line in install.splitlines())
    board = new_board(tmp_path, "wdtrb", image=app_image("1.0.0"), files={"main.py": main})
    board.write_file("v2.bin", app_image("2.0.0"))
    with BoardRun(board) as run:
        run.wait_idle(timeout=30)
    runs = [line for line in run.transcript().splitlines() if line.startswith("RUN")]
    assert runs == ["RUN 1.0.0", "RUN 2.0.0", "RUN 1.0.0"]
    status = board.status()
    assert [e.state for e in status.entries] == [espidf.STATE_VALID, espidf.STATE_ABORTED]


def test_link_can_be_taken_down_under_running_firmware(tmp_path):
    main = (
        "import network, time\n"
        "w = network.WLAN(network.STA_IF)\nw.active(True)\nw.connect('bench', 'pw')\n"
        "print('UP', w.isconnected(), w.status())\n"
        "open('ready', 'w').close()\n"
        "while w.isconnected():\n    time.sleep_ms(10)\n"
        "print('DOWN', w.isconnected(), w.status())\n"
    )
    board = new_board(tmp_path, "net", image=app_image("1.0.0"), files={"main.py": main})
    with BoardRun(board) as run:
        run.wait_for("UP True 1010")
        run.set_link(False)
        run.wait_idle()
    assert "DOWN False 201" in run.transcript()


def test_deep_sleep_wake_skips_the_rollback_step(tmp_path):
    # A PENDING_VERIFY image that deep-sleeps wakes in the same slot, still pending.
    main = (
        "import app, esp32, machine, os\n"
        "print('RUN', app.VERSION, machine.reset_cause())\n"
        "if app.VERSION == '1.0.0':\n"
        "    t = esp32.Partition(esp32.Partition.RUNNING).get_next_update()\n"
        "    d = open('v2.bin', 'rb').read()\n"
        "    t.writeblocks(0, d + b'\\xff' * (-len(d) % 4096))\n"
        "    t.set_boot()\n    machine.reset()\n"
        "elif machine.reset_cause() != machine.DEEPSLEEP_RESET:\n"
        "    machine.deepsleep(50)\n"
    )
    board = new_board(tmp_path, "ds", image=app_image("1.0.0"), files={"main.py": main})
    board.write_file("v2.bin", app_image("2.0.0"))
    with BoardRun(board) as run:
        run.wait_idle(timeout=30)
    runs = [line for line in run.transcript().splitlines() if line.startswith("RUN")]
    assert runs == ["RUN 1.0.0 1", "RUN 2.0.0 2", "RUN 2.0.0 4"]
    assert board.status().entries[1].state == espidf.STATE_PENDING_VERIFY


UPDATE_MAIN = """
import app, esp32, machine
print("RUN", app.VERSION)
if app.VERSION == "1.0.0":
    t = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    with open("v2.bin", "rb") as f:
        buf = bytearray(4096)
        block = 0
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for i in range(n, 4096):
                buf[i] = 0xFF
            t.writeblocks(block, buf)
            block += 1
    t.set_boot()
    machine.reset()
else:
    esp32.Partition.mark_app_valid_cancel_rollback()
    print("COMMITTED")
"""


def _count_ops(tmp_path) -> int:
    board = new_board(tmp_path / "count", "count", image=app_image("1.0.0"), files={"main.py": UPDATE_MAIN})
    board.write_file("v2.bin", app_image("2.0.0", (("pad.py", "X = " + repr("x" * 9000)),)))
    with BoardRun(board) as run:
        run.wait_for("COMMITTED")
    return run.flash.ops


@pytest.mark.parametrize("tear", [False, True])
def test_power_cut_during_a_naive_update_never_leaves_a_partial_image_booting(tmp_path, tear):
    """Cut power before each flash operation of a raw esp32-API update: always a valid image boots."""
    total = _count_ops(tmp_path)
    assert total >= 10
    v2 = app_image("2.0.0", (("pad.py", "X = " + repr("x" * 9000)),))
    for n in range(1, total + 1):
        board = new_board(tmp_path / f"{tear}-{n}", "pc", image=app_image("1.0.0"), files={"main.py": UPDATE_MAIN})
        board.write_file("v2.bin", v2)
        with BoardRun(board, plan=PowerPlan(cut_before=n, tear=tear, seed=n)) as run:
            run.wait_event("power_loss", timeout=30)
            run.power_on()
            # the board comes back on v1 (it then retries the update) or on v2
            run.wait_event("boot", timeout=30, count=2)
            run.wait_for("RUN", start=run.transcript().rfind("Loaded app"))
        assert run.boots()[-1].detail.split()[0] in ("ota_0", "ota_1")
        assert "Guru" not in run.transcript()
