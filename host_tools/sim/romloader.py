"""The ESP32 serial bootloader of a virtual board: the ROM loader, and the flasher stub once esptool uploaded it.

A state machine from received bytes to reply bytes; it owns the board's flash, MAC and flash id and
nothing else, so a supervisor or a test drives it from any serial endpoint:

    loader = RomLoader(Flash(path), mac=bytes.fromhex("240ac4000001"))
    port.write(DOWNLOAD_BOOT_TEXT)          # the chip left reset with IO0 low
    port.write(loader.feed(port.read()))    # every chunk received, as it comes
    loader.exit         # "run" / "reboot": the ROM was told to leave download mode (FLASH_END)
    loader.power_loss   # the flash's PowerPlan cut power mid-operation: the board is off

The protocol is esptool's (docs serial-protocol.rst, loader.py, targets/esp32.py). The ROM replies with
four status bytes (status, error, 0, 0), returns MD5 as 32 hex characters, takes 4-word *_BEGIN and an
8-byte SPI_ATTACH, and has no ERASE_FLASH/ERASE_REGION/READ_FLASH (READ_FLASH_SLOW reads 64 bytes a
command). The stub (esp-flasher-stub, src/command_handler.c) answers OHAI when started, replies with a
two-byte big-endian code (0xC000...), answers SYNC with value 0, and streams READ_FLASH.

Writes go through `Flash.erase`/`Flash.write` as each loader does them, so a power cut can tear them and
strict mode sees what the chip sees:
- ROM: *_BEGIN erases the whole region first (esp_rom_spiflash_erase_area: sectors up to a 64 KiB
  boundary, 64 KiB blocks, sectors); each _DATA block is written, read back, 0x08 if it differs.
- stub: erases just ahead of the write, a 64 KiB block where aligned else a 4 KiB sector, skipping blank
  sectors until it meets a dirty one; it acknowledges a _DATA block before writing it (an error is
  reported on the next command), and writes inflated data in 32 KiB pieces.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from host_tools.sim.esp32regs import Esp32Registers, jedec_for_size
from host_tools.sim.flash import Flash, FlashError, PowerLoss
from host_tools.sim.slip import SlipDecoder, encode

# What the ROM prints on UART0 when it comes out of reset with IO0 low; esptool looks for
# "boot:0x.." and "waiting for download" after its reset sequence.
DOWNLOAD_BOOT_TEXT = (b"ets Jun  8 2016 00:22:57\r\n\r\n"
                      b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
                      b"waiting for download\r\n")

# Opcodes (loader.py ESP_CMDS)
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END, SPI_FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3

# Why a command failed, and the code each loader sends for it (serial-protocol.rst "ROM Loader Errors";
# esp-flasher-stub src/commands.h)
BAD_LENGTH, CHECKSUM, INVALID, FAILED, NOT_IN_FLASH_MODE, INFLATE, NOT_ENOUGH, TOO_MUCH, WRITE_VERIFY, READ_LENGTH, \
    NOT_IMPLEMENTED = range(11)
ROM_CODES = {CHECKSUM: 0x07, FAILED: 0x06, INFLATE: 0x0B, WRITE_VERIFY: 0x08, READ_LENGTH: 0x0A}  # else 0x05 bad message
STUB_CODES = {BAD_LENGTH: 0xC000, CHECKSUM: 0xC100, INVALID: 0xC300, FAILED: 0xC400, NOT_IN_FLASH_MODE: 0xC600,
              INFLATE: 0xC700, NOT_ENOUGH: 0xC800, TOO_MUCH: 0xC900, NOT_IMPLEMENTED: 0xFF00}
ROM_BAD_MESSAGE = 0x05

SYNC_LENGTH = 36  # 07 07 12 20 + 32 x 55
ROM_SYNC_VALUE = 0x20120707
SECTOR, BLOCK = 0x1000, 0x10000
ROM_FLASH_SIZE = 2 * 1024 * 1024  # the ROM's flash size until SPI_SET_PARAMS (esptool cmds.erase_region)
READ_SLOW_BLOCK = 64
INFLATE_CHUNK = 32 * 1024  # TINFL_LZ_DICT_SIZE: inflated data is written when this fills
MAX_READ_PACKET = 4096
MAX_FRAME = 8 + 0x4000 + 0xFF  # the stub's FRAME_BUFFER_SIZE
BLANK_SECTOR = b"\xff" * SECTOR


class _Refused(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Download:
    """A FLASH_BEGIN or FLASH_DEFL_BEGIN in progress."""

    addr: int  # where the next byte goes
    remaining: int  # bytes the stub still expects
    erase_addr: int = 0  # stub: the next sector not yet erased
    erase_left: int = 0
    inflater: zlib._Decompress | None = None
    pending: bytearray = field(default_factory=bytearray)  # inflated, not yet written


@dataclass
class _Read:
    """A stub READ_FLASH streaming packets, one unacknowledged at a time."""

    addr: int
    left: int
    total: int
    packet: int
    md5: hashlib._Hash = field(default_factory=hashlib.md5)


class RomLoader:
    """Download mode of one ESP32: `feed` received bytes, send back what it returns."""

    def __init__(self, flash: Flash, mac: bytes, *, jedec_id: int | None = None, chip_rev: int = 300) -> None:
        if len(mac) != 6:
            raise ValueError("an ESP32 MAC is 6 bytes")
        self.flash = flash
        self.mac = bytes(mac)
        self.regs = Esp32Registers(self.mac, jedec_id or jedec_for_size(flash.size), flash.size, chip_rev)
        self._slip = SlipDecoder(MAX_FRAME)
        self._tables()
        self.reset()

    def reset(self) -> None:
        """The chip came out of reset into download mode: the ROM runs, nothing is in progress."""
        self.stub = False
        self.exit: str | None = None
        self.power_loss: PowerLoss | None = None
        self._chip_size = ROM_FLASH_SIZE
        self._download: _Download | None = None
        self._mem_left = 0
        self._read: _Read | None = None
        self._post: Callable[[list[bytes]], None] | None = None
        self._deferred: int | None = None  # the stub's error from the last post-process, sent to the next command
        self._dirty_seen = False
        self._slip.reset()
        self.regs.reset()

    @property
    def baud(self) -> int:
        return self.regs.baud

    @baud.setter
    def baud(self, value: int) -> None:
        self.regs.baud = value

    def feed(self, data: bytes) -> bytes:
        """Bytes received on UART0 -> bytes the loader sends back (possibly none). Never raises for any input."""
        out: list[bytes] = []
        for frame in self._slip.feed(data):
            if self.exit or self.power_loss:
                break
            try:
                self._frame(frame, out)
            except PowerLoss as loss:
                self.power_loss = loss
        return b"".join(out)

    def _frame(self, frame: bytes, out: list[bytes]) -> None:
        if self._read is not None and self._read_ack(frame, out):
            return
        if len(frame) < 8:
            return
        direction, op, size, chk = struct.unpack_from("<BBHI", frame)
        data = frame[8:]
        if direction != 0:
            if self.stub:
                self._reply(out, op, code=STUB_CODES[INVALID])
            return
        if size != len(data):
            self._refuse(out, op, BAD_LENGTH)
            return
        if self._deferred is not None:
            self._reply(out, op, code=self._deferred)
            self._deferred = None
            return
        handler = self._handler(op)
        if handler is None:
            return
        try:
            value, body = handler(data, chk, out)
        except _Refused as refused:
            self._post = None
            self._refuse(out, op, refused.reason)
            return
        self._reply(out, op, value, body)
        post, self._post = self._post, None
        if post is not None:
            try:
                post(out)
            except _Refused as refused:
                self._deferred = STUB_CODES.get(refused.reason, STUB_CODES[FAILED])

    def _handler(self, op: int) -> Callable[[bytes, int, list[bytes]], tuple[int, bytes]] | None:
        only = self._stub_only if self.stub else self._rom_only
        if op in only:
            return only[op]
        return self._common.get(op, self._unknown)

    def _tables(self) -> None:
        self._common = {SYNC: self._sync, READ_REG: self._read_reg, WRITE_REG: self._write_reg, SPI_SET_PARAMS: self._set_params,
                  SPI_ATTACH: self._attach, CHANGE_BAUDRATE: self._change_baud, SPI_FLASH_MD5: self._md5,
                  FLASH_BEGIN: self._flash_begin, FLASH_DEFL_BEGIN: self._defl_begin, FLASH_DATA: self._flash_data,
                  FLASH_DEFL_DATA: self._defl_data, FLASH_END: self._flash_end, FLASH_DEFL_END: self._flash_end,
                  MEM_BEGIN: self._mem_begin, MEM_DATA: self._mem_data, MEM_END: self._mem_end,
                  GET_SECURITY_INFO: self._security_info}
        self._stub_only = {ERASE_FLASH: self._erase_flash, ERASE_REGION: self._erase_region, READ_FLASH: self._read_flash,
                           RUN_USER_CODE: None}  # the stub sends no reply to RUN_USER_CODE
        self._rom_only = {READ_FLASH_SLOW: self._read_flash_slow}

    def _reply(self, out: list[bytes], op: int, value: int = 0, data: bytes = b"", code: int = 0) -> None:
        if self.stub:
            body = data + code.to_bytes(2, "big")
        else:
            body = data + (bytes((1, code, 0, 0)) if code else bytes(4))
        out.append(encode(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _refuse(self, out: list[bytes], op: int, reason: int) -> None:
        code = STUB_CODES.get(reason, STUB_CODES[INVALID]) if self.stub else ROM_CODES.get(reason, ROM_BAD_MESSAGE)
        self._reply(out, op, code=code)

    # --- commands both loaders have -------------------------------------------------------------

    def _sync(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == SYNC_LENGTH)
        value = 0 if self.stub else ROM_SYNC_VALUE  # value 0 tells esptool the stub is already running
        for _ in range(7):  # eight identical replies in all
            self._reply(out, SYNC, value)
        return value, b""

    def _read_reg(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 4)
        return self.regs.read(struct.unpack("<I", data)[0]), b""

    def _write_reg(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) and len(data) % 16 == 0, NOT_ENOUGH)
        for addr, value, mask, _delay_us in struct.iter_unpack("<IIII", data):
            self.regs.write(addr, value, mask)
        return 0, b""

    def _set_params(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 24)
        self._chip_size = struct.unpack_from("<I", data, 4)[0]
        return 0, b""

    def _attach(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == (4 if self.stub else 8))  # the ROM takes an extra "is legacy" word
        return 0, b""

    def _change_baud(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 8)
        new = struct.unpack_from("<I", data)[0]
        self._post = lambda out: setattr(self, "baud", new)  # the reply still goes out at the old rate
        return 0, b""

    def _md5(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 16)
        addr, size = struct.unpack_from("<II", data)
        digest = hashlib.md5(self._flash_read(addr, size))
        return 0, digest.digest() if self.stub else digest.hexdigest().encode()

    def _security_info(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        if not self.stub:
            raise _Refused(INVALID)  # the ESP32 ROM predates GET_SECURITY_INFO; esptool falls back to the magic word
        _need(not data)
        raise _Refused(NOT_IMPLEMENTED)

    def _unknown(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        raise _Refused(INVALID)

    def _mem_begin(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 16)
        self._mem_left = struct.unpack_from("<I", data)[0]
        return 0, b""

    def _mem_data(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        block = self._data_block(data, chk, check_sum=not self.stub)  # the stub does not check MEM_DATA's checksum
        _need(len(block) <= self._mem_left, TOO_MUCH)
        self._mem_left -= len(block)  # RAM is not modelled: the stub is emulated, not run
        return 0, b""

    def _mem_end(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 8)
        execute = struct.unpack_from("<I", data)[0] == 0
        if execute and not self.stub:
            self._post = self._start_stub
        elif execute:
            self._post = lambda out: setattr(self, "exit", "ram")  # the stub jumps to code we cannot run
        return 0, b""

    def _start_stub(self, out: list[bytes]) -> None:
        # Whatever esptool uploaded, the board now behaves as esptool's stub (stub_lib_flash_init reads the flash id).
        self.stub = True
        self._chip_size = self.flash.size
        self._download = None
        out.append(encode(b"OHAI"))

    # --- writing flash ---------------------------------------------------------------------------

    def _flash_begin(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        return self._begin(data, None)

    def _defl_begin(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        return self._begin(data, zlib.decompressobj())

    def _begin(self, data: bytes, inflater: zlib._Decompress | None) -> tuple[int, bytes]:
        _need(len(data) in ((16, 20) if self.stub else (16,)))  # the ESP32 ROM has no 5th (encrypt) word
        size, _blocks, _block_size, offset = struct.unpack_from("<IIII", data)
        self._download = None
        if not self.stub:
            self._erase_area(offset, size)  # size: what to erase (deflate: rounded up to 1 KiB)
            self._download = _Download(offset, size, inflater=inflater)
            return 0, b""
        start, end = offset // SECTOR * SECTOR, -(-(offset + size) // SECTOR) * SECTOR
        self._download = _Download(offset, size, start, end - start, inflater)
        self._dirty_seen = False
        self._erase_next()
        return 0, b""

    def _flash_data(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        dl = self._in_flash_mode(data)
        if not self.stub:
            self._rom_write(self._data_block(data, chk))  # the whole block, 0xFF padding included
            return 0, b""
        block = self._data_block(data, chk)
        self._post = lambda out: self._stub_write(block[: dl.remaining])
        return 0, b""

    def _defl_data(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) >= 16)
        dl = self._in_flash_mode(data)
        _need(dl.inflater is not None, NOT_IN_FLASH_MODE)
        block = self._data_block(data, chk)
        if not self.stub:
            self._inflate(dl, block, self._rom_write)
            return 0, b""

        def post(out: list[bytes]) -> None:
            self._erase_next()  # the stub erases ahead while it inflates
            self._inflate(dl, block, self._stub_write)
        self._post = post
        return 0, b""

    def _flash_end(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 4)
        stay = struct.unpack("<I", data)[0]
        if not self.stub:  # the ROM leaves download mode: 0 reboots, 1 runs the app in flash
            self._post = lambda out: setattr(self, "exit", "run" if stay else "reboot")
            return 0, b""
        _need(self._download is not None, NOT_IN_FLASH_MODE)
        _need(self._download.remaining == 0)
        self._download = None  # the stub ignores the reboot flag (esp-flasher-stub: "TODO: Implement reboot")
        return 0, b""

    def _in_flash_mode(self, data: bytes) -> _Download:
        _need(len(data) >= 16, NOT_ENOUGH)
        _need(self._download is not None, NOT_IN_FLASH_MODE)
        return self._download

    def _data_block(self, data: bytes, chk: int, check_sum: bool = True) -> bytes:
        """The payload of a *_DATA command: u32 size, seq, 0, 0, then data; chk = 0xEF ^ every data byte."""
        _need(len(data) >= 16, NOT_ENOUGH)
        size = struct.unpack_from("<I", data)[0]
        block = data[16:]
        _need(size == len(block), TOO_MUCH)
        _need(not check_sum or _checksum(block) == chk & 0xFF, CHECKSUM)
        return block

    def _inflate(self, dl: _Download, block: bytes, write: Callable[[bytes], None]) -> None:
        try:
            dl.pending += dl.inflater.decompress(block)
        except zlib.error:
            raise _Refused(INFLATE) from None
        if self.stub:
            _need(len(dl.pending) <= dl.remaining, INFLATE)
        while len(dl.pending) >= INFLATE_CHUNK:
            write(bytes(dl.pending[:INFLATE_CHUNK]))
            del dl.pending[:INFLATE_CHUNK]
        if dl.inflater.eof and dl.pending:
            write(bytes(dl.pending))
            dl.pending.clear()

    def _rom_write(self, data: bytes) -> None:
        dl = self._download
        self._flash_write(dl.addr, data)
        _need(self._flash_read(dl.addr, len(data)) == data, WRITE_VERIFY)
        dl.addr += len(data)

    def _stub_write(self, data: bytes) -> None:
        dl = self._download
        if dl is None or not data:
            return
        end = dl.addr + len(data)
        while dl.erase_addr < end and dl.erase_left > 0:
            self._erase_next()
        self._flash_write(dl.addr, data)
        dl.addr = end
        dl.remaining -= len(data)

    def _erase_next(self) -> None:
        """One step of the stub's erase-ahead: skip a blank sector (until a dirty one was seen), or erase a block/sector."""
        dl = self._download
        if dl is None or dl.erase_left <= 0:
            return
        if not self._dirty_seen:
            if self._flash_read(dl.erase_addr, SECTOR) == BLANK_SECTOR:
                dl.erase_addr += SECTOR
                dl.erase_left -= SECTOR
                return
            self._dirty_seen = True
        size = BLOCK if dl.erase_left >= BLOCK and dl.erase_addr % BLOCK == 0 else SECTOR
        self._flash_erase(dl.erase_addr, size)
        dl.erase_addr += size
        dl.erase_left = max(0, dl.erase_left - size)

    def _erase_area(self, addr: int, length: int) -> None:
        """esp_rom_spiflash_erase_area: sectors up to a 64 KiB boundary, then blocks while more than one remains, then sectors."""
        if not length:
            return
        _need(addr % SECTOR == 0 and addr + length <= self._chip_size, FAILED)
        sector, total = addr // SECTOR, -(-length // SECTOR)
        per_block = BLOCK // SECTOR
        head = min(per_block - sector % per_block, total)
        total -= head
        steps = [SECTOR] * head
        while total > per_block:
            steps.append(BLOCK)
            total -= per_block
        steps += [SECTOR] * total
        for size in steps:
            self._flash_erase(sector * SECTOR, size)
            sector += size // SECTOR

    # --- stub-only and ROM-only commands ---------------------------------------------------------

    def _erase_flash(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        self._flash_erase(0, self.flash.size)  # one chip-erase command
        return 0, b""

    def _erase_region(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 8)
        addr, size = struct.unpack("<II", data)
        _need(addr % SECTOR == 0 and size % SECTOR == 0)
        while size > 0:
            step = BLOCK if size >= BLOCK and addr % BLOCK == 0 else SECTOR
            self._flash_erase(addr, step)
            addr, size = addr + step, size - step
        return 0, b""

    def _read_flash(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 16)
        addr, length, packet, _in_flight = struct.unpack("<IIII", data)

        def post(out: list[bytes]) -> None:  # after the OK reply: packets, each acknowledged, then the MD5
            _need(0 < packet <= MAX_READ_PACKET)
            self._check_range(addr, length)
            self._read = _Read(addr, length, length, packet)
            self._read_next(out)
        self._post = post
        return 0, b""

    def _read_next(self, out: list[bytes]) -> None:
        rd = self._read
        if rd.left:
            chunk = self._flash_read(rd.addr, min(rd.left, rd.packet))
            rd.md5.update(chunk)
            rd.addr += len(chunk)
            rd.left -= len(chunk)
            out.append(encode(chunk))
        else:
            out.append(encode(rd.md5.digest()))
            self._read = None

    def _read_ack(self, frame: bytes, out: list[bytes]) -> bool:
        """esptool acknowledges each packet with the u32 total it has; anything else ends the read (then is a command)."""
        rd = self._read
        if len(frame) != 4:
            out.append(encode(rd.md5.digest()))
            self._read = None
            return False
        if rd.left or struct.unpack("<I", frame)[0] >= rd.total:
            self._read_next(out)
        return True

    def _read_flash_slow(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 8)
        addr, length = struct.unpack("<II", data)
        _need(length <= READ_SLOW_BLOCK, READ_LENGTH)
        return 0, self._flash_read(addr, length).ljust(READ_SLOW_BLOCK, b"\x00")  # always a 64-byte buffer

    # --- the flash, within the size the loader was told ------------------------------------------

    def _check_range(self, addr: int, length: int) -> None:
        _need(addr + length <= min(self._chip_size, self.flash.size), FAILED)

    def _flash_read(self, addr: int, length: int) -> bytes:
        self._check_range(addr, length)
        return self.flash.read(addr, length)

    def _flash_write(self, addr: int, data: bytes) -> None:
        self._check_range(addr, len(data))
        if data:
            self.flash.write(addr, data)

    def _flash_erase(self, addr: int, length: int) -> None:
        self._check_range(addr, length)
        try:
            self.flash.erase(addr, length)
        except FlashError:
            raise _Refused(FAILED) from None


def _need(condition: object, reason: int = BAD_LENGTH) -> None:
    if not condition:
        raise _Refused(reason)


def _checksum(data: bytes) -> int:
    """0xEF XOR every byte, folded as one big integer (a 16 KiB block in a few steps, not 16384)."""
    width = 1 << max(len(data) - 1, 0).bit_length()
    value = int.from_bytes(data.ljust(width, b"\0"), "little")
    bits = width * 8
    while bits > 8:
        bits //= 2
        value = (value >> bits) ^ (value & ((1 << bits) - 1))
    return value ^ 0xEF
