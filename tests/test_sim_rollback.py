"""The ESP-IDF rollback cycle, driven through the esp32 API by code running on the board."""

from __future__ import annotations

import pytest

from host_tools.esp import espidf
from host_tools.sim.runtime import BoardRun
from simkit import app_image, new_board

pytestmark = pytest.mark.fw

# A reboot-spanning scenario as a state machine (like MicroPython's
# tests/ports/esp32/partition_ota.py): the step survives resets in a file.
SCENARIO = r"""
import app, esp32, machine

def otadata():
    part = esp32.Partition("otadata")
    out = []
    for i in (0, 1):
        buf = bytearray(32)
        part.readblocks(i, buf)
        seq = int.from_bytes(buf[0:4], "little")
        state = int.from_bytes(buf[24:28], "little")
        out.append("%d/%d" % (seq if seq != 0xFFFFFFFF else -1, state if state != 0xFFFFFFFF else -1))
    return " ".join(out)

def step(n=None):
    if n is None:
        try:
            with open("step") as f:
                return int(f.read())
        except OSError:
            return 0
    with open("step", "w") as f:
        f.write(str(n))

def install(path):
    target = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    buf = bytearray(4096)
    block = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            if n < 4096:
                for i in range(n, 4096):
                    buf[i] = 0xFF
            target.writeblocks(block, buf)
            block += 1
    target.set_boot()

s = step()
running = esp32.Partition(esp32.Partition.RUNNING).info()[4]
print("STEP", s, "VERSION", app.VERSION, "RUNNING", running, "OTADATA", otadata())
if s == 0:
    step(1); install("v2.bin"); machine.reset()
elif s == 1:
    step(2); machine.reset()          # v2 never marks itself valid
elif s == 2:
    step(3); esp32.Partition(esp32.Partition.RUNNING).get_next_update().set_boot(); machine.reset()
elif s == 3:
    esp32.Partition.mark_app_valid_cancel_rollback()
    esp32.Partition.mark_app_valid_cancel_rollback()   # a no-op when already VALID
    step(4); machine.reset()
elif s == 4:
    step(5); machine.reset()
else:
    print("DONE")
"""


def steps(transcript: str) -> list[str]:
    return [line.strip() for line in transcript.splitlines() if line.startswith("STEP")]


def test_rollback_cycle_through_the_esp32_api(tmp_path):
    board = new_board(tmp_path, "rb", image=app_image("1.0.0"), files={"main.py": SCENARIO})
    board.write_file("v2.bin", app_image("2.0.0"))
    with BoardRun(board) as run:
        run.wait_for("DONE", timeout=60)
    seen = steps(run.transcript())
    v, ok, new, pend, abrt = 2, espidf.STATE_VALID, espidf.STATE_NEW, espidf.STATE_PENDING_VERIFY, espidf.STATE_ABORTED
    assert seen == [
        f"STEP 0 VERSION 1.0.0 RUNNING ota_0 OTADATA 1/{ok} -1/-1",  # blank otadata -> {seq 1, VALID}
        f"STEP 1 VERSION 2.0.0 RUNNING ota_1 OTADATA 1/{ok} 2/{pend}",  # NEW -> PENDING_VERIFY
        f"STEP 2 VERSION 1.0.0 RUNNING ota_0 OTADATA 1/{ok} 2/{abrt}",  # reset unmarked: rolled back
        f"STEP 3 VERSION 2.0.0 RUNNING ota_1 OTADATA 1/{ok} 2/{pend}",  # set_boot again: one more try
        f"STEP 4 VERSION 2.0.0 RUNNING ota_1 OTADATA 1/{ok} 2/{ok}",  # marked valid
        f"STEP 5 VERSION 2.0.0 RUNNING ota_1 OTADATA 1/{ok} 2/{ok}",  # stays across resets
    ]
    assert v == 2 and new == 0
    status = board.status()
    assert status.active == 1 and status.entries[1].state == espidf.STATE_VALID
    assert status.next_boot.startswith("ota_1")
    assert run.flash.faults == []


SET_BOOT_CORRUPT = r"""
import esp32
target = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
with open("bad.bin", "rb") as f:
    data = f.read()
data = data + b"\xff" * (-len(data) % 4096)
target.writeblocks(0, data)
before = bytearray(64)
esp32.Partition("otadata").readblocks(0, before, 0)
try:
    target.set_boot()
    print("SET_BOOT accepted")
except OSError as e:
    print("SET_BOOT", e.args[0])
after = bytearray(64)
esp32.Partition("otadata").readblocks(0, after, 0)
other0 = bytearray(32); other1 = bytearray(32)
esp32.Partition("otadata").readblocks(1, other1)
print("OTADATA_UNCHANGED", before == after, other1 == bytearray(b"\xff" * 32))
"""


@pytest.mark.parametrize("flip_at", [0, 12, 200, -1])
def test_set_boot_on_a_corrupted_image_raises_5379(tmp_path, flip_at):
    bad = bytearray(app_image("2.0.0"))
    bad[flip_at] ^= 0x10
    board = new_board(tmp_path, "sb", image=app_image("1.0.0"), files={"main.py": SET_BOOT_CORRUPT})
    board.write_file("bad.bin", bytes(bad))
    with BoardRun(board) as run:
        run.wait_idle()
    out = run.transcript()
    assert "SET_BOOT -5379" in out, out
    assert "OTADATA_UNCHANGED True True" in out


API_ERRORS = r"""
import esp32, errno
P = esp32.Partition
def err(f):
    try:
        f()
        return "ok"
    except Exception as e:
        return "%s %s" % (type(e).__name__, e.args[0] if e.args else "")
nxt = P(P.RUNNING).get_next_update()
print("KW", err(lambda: P("ota_0", block_size=4096)))
print("ENOENT", err(lambda: P("nope")), errno.ENOENT)
print("BADID", err(lambda: P(7)))
print("W260", err(lambda: nxt.writeblocks(0, bytearray(100))))
print("W4", err(lambda: nxt.writeblocks(0, bytearray(b"\x00" * 100), 0)))
print("IOCTL", nxt.ioctl(4, 0), nxt.ioctl(5, 0), nxt.ioctl(6, 1), nxt.ioctl(9, 0), P("vfs", 512).ioctl(6, 0))
print("FIND", len(P.find()), len(P.find(P.TYPE_DATA, 0)), P.find(P.TYPE_APP, label="ota_1")[0].info())
print("BOOT", P(P.BOOT).info()[4], "NEXT", nxt.info()[4], nxt.get_next_update().info()[4])
print("READ_PAST", err(lambda: nxt.readblocks(384, bytearray(1))))
buf = bytearray(4)
nxt.readblocks(0, buf, 0)
print("ERASED", bytes(buf) == b"\x00" * 4 or bytes(buf))
"""


def test_partition_api_errors_match_micropython(tmp_path):
    board = new_board(tmp_path, "api", image=app_image("1.0.0"), files={"main.py": API_ERRORS})
    with BoardRun(board) as run:
        run.wait_idle()
    out = run.transcript()
    assert "KW TypeError function doesn't take keyword arguments" in out
    assert "ENOENT OSError 2 2" in out
    assert "BADID ValueError" in out
    assert "W260 OSError -260" in out
    assert "W4 ok" in out
    assert "IOCTL 384 4096 0 None -22" in out
    assert "FIND 2 1 (0, 17, 1638400, 1572864, 'ota_1', False)" in out
    assert "BOOT ota_0 NEXT ota_1 ota_0" in out
    assert "READ_PAST OSError -260" in out
    # 4-arg writeblocks wrote zeros without erasing (into an erased slot: fine, no fault)
    assert run.flash.faults == []


def test_strict_mode_reports_write_over_unerased(tmp_path):
    code = "import esp32\np=esp32.Partition('ota_1')\np.writeblocks(0, bytearray(4096))\np.writeblocks(0, b'\\x00' * 16, 0)\np.writeblocks(0, b'\\x01' * 16, 0)\nprint('WROTE')\n"
    board = new_board(tmp_path, "strict", image=app_image("1.0.0"), files={"main.py": code})
    with BoardRun(board) as run:
        run.wait_idle()
    assert "WROTE" in run.transcript()
    assert "FLASH FAULT: write over unerased data at 0x190000" in run.transcript()
    assert len(run.flash.faults) == 1
