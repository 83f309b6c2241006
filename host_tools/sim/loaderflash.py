"""How the ESP32 ROM loader and esptool's flasher stub erase and write flash for esptool.

A download is *_BEGIN (where, how much) then _DATA blocks, raw or zlib-compressed; the two loaders
differ in when they erase:
- the ROM erases the whole region at *_BEGIN (esp_rom_spiflash_erase_area: 4 KiB sectors up to a
  64 KiB boundary, 64 KiB blocks while more than 16 sectors remain, then sectors), writes each block
  and reads it back;
- the stub (esp-flasher-stub command_handler.c, esp-stub-lib flash.c) erases just ahead of each
  write: a 64 KiB block where aligned and that much remains, else a sector; until it meets a sector
  that is not blank it reads each one and skips erasing it if it is all 0xFF.
Both write inflated data whenever their 32 KiB window (TINFL_LZ_DICT_SIZE) fills. Every erase and
write is one `Flash` operation, so a PowerPlan cuts where the chip would, and strict mode never sees
a write over unerased data from a well-formed download.

    lf = LoaderFlash(flash)
    dl = lf.rom_begin(0x10000, 0x3000)    # erases three sectors
    lf.rom_write(dl, block)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from host_tools.sim.flash import Flash, FlashError

SECTOR, BLOCK = 0x1000, 0x10000
ROM_FLASH_SIZE = 2 * 1024 * 1024  # the ROM's flash size until SPI_SET_PARAMS (esptool cmds.erase_region)
INFLATE_CHUNK = 32 * 1024
BLANK_SECTOR = b"\xff" * SECTOR

# Why the flash side of a command failed (the loader turns these into its error codes)
FAILED = "failed"  # outside the flash the loader was told of, or not sector aligned
WRITE_VERIFY = "verify"  # the ROM read a block back and it differs
INFLATE = "inflate"  # the compressed stream is corrupt, or inflates past the size given at *_BEGIN


class Refused(Exception):
    """A command the loader refuses; `reason` names why (romloader maps it to the ROM's or the stub's code)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Download:
    """A FLASH_BEGIN or FLASH_DEFL_BEGIN in progress."""

    addr: int  # where the next byte goes
    remaining: int  # bytes the stub still expects
    erase_addr: int = 0  # stub: the first sector not yet erased (or skipped as blank)
    erase_left: int = 0
    inflater: zlib._Decompress | None = None
    pending: bytearray = field(default_factory=bytearray)  # inflated, not yet written


class LoaderFlash:
    """The board's flash as a loader reaches it: within `chip_size` (SPI_SET_PARAMS), failures as `Refused`."""

    def __init__(self, flash: Flash) -> None:
        self.flash = flash
        self.chip_size = ROM_FLASH_SIZE
        self._dirty_seen = False

    def read(self, addr: int, length: int) -> bytes:
        self.check(addr, length)
        return self.flash.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.check(addr, len(data))
        if data:
            self.flash.write(addr, data)

    def erase(self, addr: int, length: int) -> None:
        self.check(addr, length)
        try:
            self.flash.erase(addr, length)
        except FlashError:
            raise Refused(FAILED) from None

    def check(self, addr: int, length: int) -> None:
        """Refused(FAILED) unless [addr, addr + length) is within the flash the loader knows."""
        if addr + length > min(self.chip_size, self.flash.size):
            raise Refused(FAILED)

    # --- the ROM ----------------------------------------------------------------------------------

    def rom_begin(self, offset: int, erase_size: int, inflater: zlib._Decompress | None = None) -> Download:
        """Erase `erase_size` bytes from `offset` (rounded up to sectors), as esp_rom_spiflash_erase_area does."""
        if erase_size:
            if offset % SECTOR or offset + erase_size > self.chip_size:
                raise Refused(FAILED)
            for addr, size in rom_erase_steps(offset, erase_size):
                self.erase(addr, size)
        return Download(offset, erase_size, inflater=inflater)

    def rom_write(self, dl: Download, data: bytes) -> None:
        """Write at the download's address and read it back (the ROM's "flash write error" 0x08 if it differs)."""
        self.write(dl.addr, data)
        if self.read(dl.addr, len(data)) != data:
            raise Refused(WRITE_VERIFY)
        dl.addr += len(data)
        dl.remaining = max(0, dl.remaining - len(data))

    # --- the stub ---------------------------------------------------------------------------------

    def stub_begin(self, offset: int, size: int, inflater: zlib._Decompress | None = None) -> Download:
        """Plan to erase the sectors under [offset, offset + size) and start on the first (before the reply)."""
        start, end = offset // SECTOR * SECTOR, -(-(offset + size) // SECTOR) * SECTOR
        dl = Download(offset, size, start, end - start, inflater)
        self._dirty_seen = False
        self.erase_ahead(dl)
        return dl

    def erase_ahead(self, dl: Download) -> None:
        """One step of the stub's erase-ahead: skip a blank sector (until a dirty one was seen), else erase."""
        if dl.erase_left <= 0:
            return
        if not self._dirty_seen:
            if self.read(dl.erase_addr, SECTOR) == BLANK_SECTOR:
                dl.erase_addr += SECTOR
                dl.erase_left -= SECTOR
                return
            self._dirty_seen = True
        size = BLOCK if dl.erase_left >= BLOCK and dl.erase_addr % BLOCK == 0 else SECTOR
        self.erase(dl.erase_addr, size)
        dl.erase_addr += size
        dl.erase_left = max(0, dl.erase_left - size)

    def stub_write(self, dl: Download, data: bytes) -> None:
        """Erase ahead up to the end of `data`, then write it."""
        end = dl.addr + len(data)
        while dl.erase_addr < end and dl.erase_left > 0:
            self.erase_ahead(dl)
        self.write(dl.addr, data)
        dl.addr = end
        dl.remaining -= len(data)

    def stub_erase_region(self, addr: int, size: int) -> None:
        """ERASE_REGION: 64 KiB blocks where aligned and that much remains, else sectors."""
        if addr % SECTOR or size % SECTOR:
            raise Refused(FAILED)
        while size > 0:
            step = BLOCK if size >= BLOCK and addr % BLOCK == 0 else SECTOR
            self.erase(addr, step)
            addr, size = addr + step, size - step

    # --- both -------------------------------------------------------------------------------------

    def inflate(self, dl: Download, block: bytes, write: Callable[[Download, bytes], None]) -> None:
        """Feed one compressed block; write each full 32 KiB window, and the rest at the end of the stream."""
        try:
            dl.pending += dl.inflater.decompress(block)
        except zlib.error:
            raise Refused(INFLATE) from None
        if len(dl.pending) > dl.remaining:
            raise Refused(INFLATE)
        while len(dl.pending) >= INFLATE_CHUNK:
            write(dl, bytes(dl.pending[:INFLATE_CHUNK]))
            del dl.pending[:INFLATE_CHUNK]
        if dl.inflater.eof and dl.pending:
            write(dl, bytes(dl.pending))
            dl.pending.clear()


def rom_erase_steps(addr: int, length: int) -> list[tuple[int, int]]:
    """esp_rom_spiflash_erase_area's erases for [addr, addr + length): (address, size) in order."""
    per_block = BLOCK // SECTOR
    sector, total = addr // SECTOR, -(-length // SECTOR)
    head = min(per_block - sector % per_block, total)
    steps = [SECTOR] * head
    total -= head
    while total > per_block:
        steps.append(BLOCK)
        total -= per_block
    steps += [SECTOR] * total
    out = []
    for size in steps:
        out.append((sector * SECTOR, size))
        sector += size // SECTOR
    return out
