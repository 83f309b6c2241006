"""What the frozen `_boot.py` and `main.c` of the ESP32 port do at each boot.

Run by the supervisor as `micropython -i _simboot.py`: the board's modules are
imported first (they are built in on a chip), the board's filesystem directory
becomes `/`, the slot's frozen modules become `/.frozen` (on sys.path where a
real board has `.frozen`), then `boot.py` and, unless the host asked for the raw
REPL, `main.py` run from the filesystem. An exception in `main.py` is printed
and the board stays at its REPL; `sys.exit()` there is a soft reset.
"""

import os
import sys

import _simbus
import esp32  # noqa: F401  built into the firmware of a real board
import espidf  # noqa: F401
import machine
import network  # noqa: F401
import ntptime  # noqa: F401  frozen on the ESP32 port; the board's modules leave sys.path below


def _mount():
    fs = os.getenv("FOTA_SIM_FS")
    frozen = os.getenv("FOTA_SIM_FROZEN")
    os.umount("/")
    os.mount(os.VfsPosix(fs), "/")
    os.mount(os.VfsPosix(frozen), "/.frozen")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/.frozen", "/lib"]  # the port's own frozen modules (ssl, ...), then the image's


def _run(name):
    try:
        os.stat(name)
    except OSError:
        return
    try:
        with open(name) as f:
            code = f.read()
        exec(code, globals())
    except SystemExit:
        machine.soft_reset()
    except BaseException as exc:  # noqa: BLE001  pyexec prints every uncaught exception
        sys.print_exception(exc)


_mount()
_run("boot.py")
if not os.getenv("FOTA_SIM_RAW"):
    _run("main.py")
_simbus.bus().call(_simbus.OP_IDLE)
del _mount, _run
