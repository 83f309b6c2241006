"""What `main.c` of the ESP32 port does at each boot, for the virtual board.

Run by the supervisor as `micropython -i -c "import _simboot"`, with the slot's
frozen modules and the board's own (compiled, as frozen modules are) in one
directory. The interpreter's host filesystem is unmounted; that directory
becomes `/.frozen` (on sys.path where a chip has `.frozen`); the chip's
identity is installed (`_identity`); `_boot` mounts the flash filesystem as `/`
with Ctrl-C ignored; then `boot.py` and, unless the host asked for the raw REPL
or boot.py failed, `main.py` run with pyexec's rules: an exception is printed
(as from "main.py", no frame of this module) and the board stays at its REPL;
`SystemExit` is a soft reset.
"""

import gc
import micropython
import os
import sys
import vfs

micropython.kbd_intr(-1)  # _boot is not interruptible; the supervisor drops Ctrl-C meanwhile


def _mount_frozen():
    # A chip runs frozen bytecode in place from flash. Here the slot's and the board's modules are one ROMFS
    # image (host_tools/sim/frozen.py), read into one buffer before anything else (so it sits at the bottom of
    # the heap) and imported in place through VfsRom: no module's bytecode is copied into the heap between
    # the application's objects, which would leave the free heap in small pieces.
    path = os.getenv("FOTA_SIM_FROZEN") + "/frozen.romfs"
    rom = bytearray(os.stat(path)[6])
    with open(path, "rb") as f:
        f.readinto(rom)
    vfs.umount("/")
    vfs.mount(vfs.VfsRom(rom), "/.frozen")
    sys.path[:] = ["", ".frozen", "/.frozen", "/lib"]  # the port's own frozen modules (ssl, ...), then the image's
    return rom


_rom = _mount_frozen()  # kept referenced for as long as the board runs

# What a chip has before main.py, loaded before the application's first object: the names of the frozen
# modules (in flash on a chip), then the board's own modules (C on a chip). A collection after each step
# frees its garbage before the next long-lived object is made, so these pack at the bottom of the heap
# instead of leaving holes between them that the application finds too small later.
import _identity  # noqa: E402
import _simbus  # noqa: E402
import esp32  # noqa: E402,F401
import machine  # noqa: E402
import network  # noqa: E402,F401
import time  # noqa: E402,F401  the chip's clock (_simclock)
import _qstrs  # noqa: E402,F401

del sys.modules["_qstrs"], _qstrs


def _print_exception(exc):
    # pyexec prints from the script's frame down; drop the frames of this runner
    buf = _identity._io.StringIO()
    sys.print_exception(exc, buf)
    lines = buf.getvalue().split("\n")
    keep, skip = [], False
    for line in lines:
        if skip and line.startswith("    "):
            continue
        skip = line.startswith('  File "_simboot.py"')
        if not skip:
            keep.append(line)
    print("\n".join(keep), end="")


def _run(name):
    # pyexec_file_if_exists(): a missing file is success
    try:
        os.stat(name)
    except OSError:
        return True
    # pyexec: Ctrl-C interrupts the script only, not what runs before or after it (the bus calls here)
    micropython.kbd_intr(3)
    try:
        execfile(name, _main)  # noqa: F821  the Unix port's builtin: the lexer reads the file as pyexec_file does, no copy of the source
        ok = True
    except SystemExit:
        micropython.kbd_intr(-1)
        machine.soft_reset()
    except BaseException as exc:  # noqa: BLE001  pyexec prints every uncaught exception
        micropython.kbd_intr(-1)
        _print_exception(exc)
        return False
    micropython.kbd_intr(-1)
    return ok


_main = {"__name__": "__main__"}
_identity.install()
gc.collect()
import _boot  # noqa: E402,F401  mounts / (first boot: makes the filesystem and boot.py)

os.chdir("/")
gc.collect()  # what start-up left behind is garbage: the application's objects pack from the bottom of the heap
_simbus.bus().call(_simbus.OP_READY)
if _run("boot.py") and not os.getenv("FOTA_SIM_RAW"):
    _run("main.py")
_simbus.bus().call(_simbus.OP_IDLE)
