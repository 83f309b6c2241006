"""`make demo` until the fleet demo lands: one virtual board, one update, one rollback.

A v1 image is flashed as over USB. Code on the board (through the esp32 API
only) writes v2 into the next OTA slot, calls set_boot() and resets. v2 boots
PENDING_VERIFY, its self-test fails, it resets without confirming: the
bootloader marks it ABORTED and boots v1 again. v1 then installs v3, whose
self-test passes and which confirms itself with
mark_app_valid_cancel_rollback(); v3 stays across resets.

    python -m host_tools.demos.rollback [--home DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from host_tools.image.freeze import freeze_sources
from host_tools.image.sim_image import build_sim_image
from host_tools.sim.device import SimDevice
from host_tools.sim.runtime import BoardRun

APP = """
VERSION = {version!r}

def self_test():
    # stands in for "sensor reads, network up, server reachable"
    return {healthy!r}
"""

# The board's main.py: an update state machine that survives resets in a file.
MAIN = r"""
import app, esp32, machine

def state(new=None):
    if new is None:
        try:
            with open("demo_state") as f:
                return f.read()
        except OSError:
            return "start"
    with open("demo_state", "w") as f:
        f.write(new)

def install(path):
    target = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    buf = bytearray(4096)
    block = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for i in range(n, 4096):
                buf[i] = 0xFF
            target.writeblocks(block, buf)
            block += 1
    target.set_boot()
    print("[app %s] wrote %s to %s, set_boot() done, resetting" % (app.VERSION, path, target.info()[4]))
    machine.reset()

running = esp32.Partition(esp32.Partition.RUNNING).info()[4]
print("[app %s] running from %s, reset cause %d" % (app.VERSION, running, machine.reset_cause()))
s = state()
if app.VERSION == "1.0.0" and s == "start":
    state("v2"); install("v2.bin")
elif app.VERSION == "1.0.0" and s == "v2":
    print("[app 1.0.0] back on v1: the bootloader rolled v2 back")
    state("v3"); install("v3.bin")
elif app.VERSION != "1.0.0" and s in ("v2", "v3"):
    if app.self_test():
        esp32.Partition.mark_app_valid_cancel_rollback()
        print("[app %s] self-test passed: marked valid" % app.VERSION)
        state("committed"); machine.reset()
    else:
        print("[app %s] self-test FAILED: resetting without confirming" % app.VERSION)
        machine.reset()
else:
    print("[app %s] steady state: nothing to do" % app.VERSION)
"""


def image(version: str, healthy: bool) -> bytes:
    return build_sim_image(freeze_sources({"app.py": APP.format(version=version, healthy=healthy)}), version=version)


def banner(text: str) -> None:
    print(f"\n==== {text} ====", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="keep the board here (default: a temporary directory)")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="fota-demo-"))
    shutil.rmtree(home / "sim" / "demo", ignore_errors=True)
    banner("create a virtual ESP32 (4 MiB, ESP32_GENERIC OTA layout) and flash v1 as over USB")
    board = SimDevice.create("demo", home)
    board.flash_app(image("1.0.0", True))
    board.write_file("v2.bin", image("2.0.0", False))
    board.write_file("v3.bin", image("3.0.0", True))
    board.write_file("main.py", MAIN)
    print(board.status().render())
    banner("power on: v1 installs v2 (self-test fails), rollback, then v3 (self-test passes)")
    with BoardRun(board, echo=sys.stdout) as run:
        run.wait_for("steady state", timeout=60)
    print("\nboots:", " -> ".join(e.detail.split()[0] for e in run.boots()))
    banner("final state: v3 VALID in ota_1, v1 kept in ota_0 as the fallback")
    print(board.status().render())
    print(f"\nflash operations: {run.flash.ops}, faults: {len(run.flash.faults)}; board files in {board.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
