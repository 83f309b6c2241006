"""`fota flash`: the first USB flash of an app image, to a real board or a virtual one.

A real board goes through esptool (5.x, dashed commands): detect the chip, check
that it is the board's chip, write the app image to ota_0 and erase otadata, so
the bootloader boots ota_0 and writes {seq 1, VALID}. A virtual board (`sim:NAME`)
goes through this function too: host_tools.sim.ports hands it the board's pty (in
download mode) or its RFC 2217 URL (`port` may be a pyserial URL).

    flash_image("/dev/ttyUSB0", Path("app.bin"), board="esp32_generic")
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from host_tools.errors import EXIT_NOT_FOUND, FotaError
from host_tools.esp import boards
from host_tools.image.build import check_app_image

CHIP_NAMES = {"ESP32": "esp32", "ESP32-S2": "esp32s2", "ESP32-S3": "esp32s3", "ESP32-C3": "esp32c3", "ESP32-C6": "esp32c6",
              "ESP32-C2": "esp32c2", "ESP32-H2": "esp32h2", "ESP32-P4": "esp32p4"}


class FlashError(FotaError):
    """A port that is not there, a chip that is not the board's, an image that does not fit."""


def esptool_cmd() -> list[str]:
    """esptool's script beside this interpreter (a venv), else its module run by this interpreter."""
    script = Path(sys.executable).with_name("esptool")
    return [str(script)] if script.exists() else [sys.executable, "-m", "esptool"]


def detected_chip(esptool_output: str) -> str | None:
    """The chip esptool reports ("Chip type: ESP32-S3 (QFN56)" or "Chip is ESP32-D0WD...")."""
    match = re.search(r"(?:Chip type:|Chip is|Detecting chip type\.\.\.)\s*(ESP32(?:-[A-Z]\d)?)", esptool_output)
    return CHIP_NAMES.get(match.group(1)) if match else None


def check_fits(image: bytes, board: boards.BoardDef) -> None:
    """The image is an app image for `board` and fits its OTA slot."""
    check_app_image(image, board)
    if len(image) > board.slot_size:
        raise FlashError(f"the image is {len(image)} bytes; {board.name}'s OTA slot holds {board.slot_size}")


def read_image(image_path: Path) -> bytes:
    """The app image file's bytes."""
    if not image_path.exists():
        raise FlashError(f"no such image file: {image_path}", hint="build one with: fota build", exit_code=EXIT_NOT_FOUND)
    return image_path.read_bytes()


def flash_image(port: str, image_path: Path, *, board: str, baud: int = 460800, progress: TextIO | None = None) -> str:
    """Flash an app image as the first USB flash; returns a one-line summary.

    `progress`: esptool's output of the write and the erase (its progress bar) is copied there as it comes."""
    image = read_image(image_path)
    if port.startswith("sim:"):
        raise FlashError(f"{port} is a virtual board", hint="flash it with: fota flash --port {port} (host_tools.sim.ports.flash)")
    definition = boards.load(board)
    check_fits(image, definition)
    if "://" not in port and not Path(port).exists():  # a URL (rfc2217://) is esptool's to open
        raise FlashError(f"no serial port {port}", hint="is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*); or use --port sim:NAME")
    chip = _detect(port, baud)
    if chip != definition.chip:
        raise FlashError(f"the board on {port} is an {chip or 'unknown chip'}, but board {definition.name} is an {definition.chip}",
                         hint="pick the right --board")
    otadata = definition.table.otadata()
    slot = definition.table.ota_slots()[0]
    _esptool(port, baud, ["write-flash", f"0x{slot.offset:x}", str(image_path)], progress=progress)
    if otadata is not None:
        _esptool(port, baud, ["erase-region", f"0x{otadata.offset:x}", f"0x{otadata.size:x}"], progress=progress)
    return f"flashed {image_path.name} to {slot.name} at 0x{slot.offset:x} on {port} ({chip}); otadata erased"


def _detect(port: str, baud: int) -> str | None:
    out = _esptool(port, baud, ["chip-id"], check=False)
    return detected_chip(out)


def _esptool(port: str, baud: int, args: list[str], check: bool = True, progress: TextIO | None = None) -> str:
    cmd = [*esptool_cmd(), "--port", port, "--baud", str(baud), "--before", "default-reset", "--after", "hard-reset", *args]
    returncode, out = run_passing_through(cmd, progress)
    if check and returncode != 0:
        raise FlashError(f"esptool {' '.join(args)} failed on {port}: {out.strip().splitlines()[-1] if out.strip() else returncode}")
    return out


def run_passing_through(cmd: list[str], progress: TextIO | None = None) -> tuple[int, str]:
    """Run `cmd` (stderr merged into stdout); copy its output to `progress` as it comes (esptool's
    progress bar redraws with \r, so bytes, not lines); (exit status, the whole output)."""
    chunks = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        stream = proc.stdout
        while stream is not None and (data := stream.read1(4096)):
            chunks.append(data)
            if progress is not None:
                progress.write(data.decode(errors="replace"))
                progress.flush()
    return proc.returncode, b"".join(chunks).decode(errors="replace")
