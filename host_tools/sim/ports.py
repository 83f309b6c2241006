"""`sim:NAME` ports: the virtual board where a command takes a USB serial port.

The product's flashing and provisioning (host_tools.device) know serial ports only; the CLI hands
`sim:NAME` here, and this module does to the virtual board what esptool or mpremote does to a chip:

    flash("sim:dev1", Path("app.bin"), board="sim")       # ota_0 written, otadata erased
    resolve_port("sim:dev1")                              # the running board's REPL pty, for mpremote
"""

from __future__ import annotations

from pathlib import Path

from host_tools.device.flashing import check_fits, flash_image, read_image
from host_tools.device.provision import ProvisionError, serial_port
from host_tools.esp import boards
from host_tools.sim.device import SimDevice

PREFIX = "sim:"


def is_sim(port: str) -> bool:
    """A `sim:NAME` port."""
    return port.startswith(PREFIX)


def flash(port: str, image_path: Path, *, board: str, home=None, baud: int = 460800, progress=None) -> str:
    """The first flash of an app image to a USB board (esptool; its progress copied to `progress`) or a
    virtual board; a one-line summary."""
    if not is_sim(port):
        return flash_image(port, image_path, board=board, baud=baud, progress=progress)
    image = read_image(image_path)
    name = port[len(PREFIX) :]
    device = SimDevice.open(name, home)
    check_fits(image, boards.load(device.config["board"]))
    device.flash_app(image)
    return f"flashed {len(image)} bytes to ota_0 of virtual board {name}; otadata erased"


def resolve_port(port: str, home=None) -> str:
    """A serial device path for mpremote: sim:NAME -> the running virtual board's pty."""
    if not is_sim(port):
        return serial_port(port)
    board = SimDevice.open(port[len(PREFIX) :], home)
    if not board.repl_link.is_symlink():
        raise ProvisionError(f"virtual board {board.name} is not running", hint=f"start it with: fota sim run {board.name}")
    return str(board.repl_link.resolve())
