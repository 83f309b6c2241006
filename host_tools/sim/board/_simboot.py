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

import micropython
import os
import sys
import vfs

import _identity
import _simbus

micropython.kbd_intr(-1)  # _boot is not interruptible; the supervisor drops Ctrl-C meanwhile


def _mount_frozen():
    frozen = os.getenv("FOTA_SIM_FROZEN")
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(frozen), "/.frozen")
    sys.path[:] = ["", ".frozen", "/.frozen", "/lib"]  # the port's own frozen modules (ssl, ...), then the image's


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
    try:
        with open(name) as f:
            code = compile(f.read(), name, "exec")
        exec(code, _main)
        return True
    except SystemExit:
        import machine

        machine.soft_reset()
    except BaseException as exc:  # noqa: BLE001  pyexec prints every uncaught exception
        _print_exception(exc)
    return False


_main = {"__name__": "__main__"}
_mount_frozen()
_identity.install()
import _boot  # noqa: E402,F401  mounts / (first boot: makes the filesystem and boot.py)

os.chdir("/")
micropython.kbd_intr(3)
_simbus.bus().call(_simbus.OP_READY)
if _run("boot.py") and not os.getenv("FOTA_SIM_RAW"):
    _run("main.py")
_simbus.bus().call(_simbus.OP_IDLE)
