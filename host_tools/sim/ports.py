"""`sim:NAME` ports: the virtual board where a command takes a USB serial port.

The product's flashing and provisioning (host_tools.device) know serial ports only; the CLI hands
`sim:NAME` here, and this module finds the serial endpoint of the virtual board that esptool or
mpremote would open on a chip:

    flash("sim:dev1", Path("app.bin"), board="sim")       # esptool: ota_0 written, otadata erased
    resolve_port("sim:dev1")                              # the running board's REPL pty, for mpremote

`flash` runs host_tools.device.flashing.flash_image, the same esptool commands as for a USB board:
a running board is reached on its RFC 2217 port, whose DTR/RTS reset it into download mode and back
into the app; a board that is off is powered on in download mode (IO0 held low) for the flash, and
esptool talks to the ROM loader on the board's pty (its reset fails there: "Chip was NOT reset").
"""

from __future__ import annotations

from pathlib import Path

from host_tools.device.flashing import check_fits, flash_image, read_image
from host_tools.device.provision import ProvisionError, serial_port
from host_tools.esp import boards
from host_tools.sim.device import SimDevice
from host_tools.sim.runtime import BoardRun

PREFIX = "sim:"


def is_sim(port: str) -> bool:
    """A `sim:NAME` port."""
    return port.startswith(PREFIX)


def flash(port: str, image_path: Path, *, board: str, home=None, baud: int = 460800, progress=None) -> str:
    """The first flash of an app image to a USB board or a virtual board, through esptool (its progress
    copied to `progress`); a one-line summary. A virtual board flashes as its own board definition."""
    if not is_sim(port):
        return flash_image(port, image_path, board=board, baud=baud, progress=progress)
    device = SimDevice.open(port[len(PREFIX) :], home)
    definition = device.config["board"]
    check_fits(read_image(image_path), boards.load(definition))  # before the board is powered for nothing
    url = device.rfc2217_url()
    if url is not None:
        summary = flash_image(url, image_path, board=definition, baud=baud, progress=progress)
        return summary.replace(f" on {url} ", f" on {port} ({url}) ")
    with BoardRun(device, download=True) as run:
        run.wait_event("download", timeout=10)
        pty = run.repl_path
        summary = flash_image(pty, image_path, board=definition, baud=baud, progress=progress)
    return summary.replace(f" on {pty} ", f" on {port} (download mode, {pty}) ")


def resolve_port(port: str, home=None) -> str:
    """A serial device path for mpremote: sim:NAME -> the running virtual board's pty."""
    if not is_sim(port):
        return serial_port(port)
    board = SimDevice.open(port[len(PREFIX) :], home)
    if not board.repl_link.is_symlink():
        raise ProvisionError(f"virtual board {board.name} is not running", hint=f"start it with: fota sim run {board.name}")
    return str(board.repl_link.resolve())
