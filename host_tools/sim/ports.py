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

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import serial
from esptool.reset import ClassicReset, HardReset

from host_tools.device.flashing import FlashError, check_fits, flash_image, read_image
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
    if url is not None:  # running: its auto-reset lines (RFC 2217) into the ROM, esptool on its pty, reset back
        pty = str(device.repl_link.resolve())
        with _in_download_mode(url):
            summary = flash_image(pty, image_path, board=definition, baud=baud, progress=progress)
        return summary.replace(f" on {pty} ", f" on {port} (reset into download mode through {url}) ")
    with BoardRun(device, download=True) as run:
        run.wait_event("download", timeout=10)
        pty = run.repl_path
        summary = flash_image(pty, image_path, board=definition, baud=baud, progress=progress)
    return summary.replace(f" on {pty} ", f" on {port} (download mode, {pty}) ")


@contextmanager
def _in_download_mode(url: str) -> Iterator[None]:
    """Hold a running virtual board in its ROM loader: esptool's own reset sequences (esptool.reset) on the
    board's RFC 2217 port, whose DTR/RTS drive its EN and IO0 as a dev board's auto-reset circuit does.

    esptool itself could talk through that port, but pyserial's RFC 2217 client renegotiates the port
    settings whenever esptool changes its read timeout (~0.2 s per command: ~55 s for `fota flash`), so
    only the resets go that way and esptool talks on the board's pty (~1 s): there its own reset fails
    ("Chip was NOT reset"), as on a USB board already in download mode, and it finds the ROM waiting."""
    with _lines(url) as line:
        ClassicReset(line)()
        if b"waiting for download" not in line.read_until(b"waiting for download"):
            raise FlashError(f"the virtual board at {url} did not enter download mode",
                             hint="is it powered? (fota sim run NAME)")
    try:
        yield
    finally:
        with _lines(url) as line:
            HardReset(line)()


def _lines(url: str) -> serial.SerialBase:
    # Opened with DTR and RTS released, as esptool opens a port: pyserial asserts both by default, and a
    # DTR left asserted holds IO0 low, so HardReset's release of EN would boot the ROM loader again.
    line = serial.serial_for_url(url, timeout=5, do_not_open=True)
    line.dtr = line.rts = False
    line.open()
    return line


def resolve_port(port: str, home=None) -> str:
    """A serial device path for mpremote: sim:NAME -> the running virtual board's pty."""
    if not is_sim(port):
        return serial_port(port)
    board = SimDevice.open(port[len(PREFIX) :], home)
    if not board.repl_link.is_symlink():
        raise ProvisionError(f"virtual board {board.name} is not running", hint=f"start it with: fota sim run {board.name}")
    return str(board.repl_link.resolve())
