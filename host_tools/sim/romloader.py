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

Flash is erased and written the way each loader does it (host_tools.sim.loaderflash), each erase and
write one counted `Flash` operation. The stub acknowledges a _DATA block before writing it, so a write
error reaches esptool on the next command, and a power cut after the acknowledgement loses the block.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from host_tools.sim.esp32regs import Esp32Registers, jedec_for_size
from host_tools.sim.flash import Flash, PowerLoss
from host_tools.sim.loaderflash import FAILED, INFLATE, WRITE_VERIFY, Download, LoaderFlash, Refused
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

# Why a command is refused, and the code each loader sends for it (serial-protocol.rst "ROM Loader
# Errors"; esp-flasher-stub src/commands.h). FAILED, WRITE_VERIFY and INFLATE come from loaderflash.
BAD_LENGTH, CHECKSUM, INVALID, NOT_IN_FLASH_MODE = "bad length", "checksum", "invalid", "not in flash mode"
NOT_ENOUGH, TOO_MUCH, READ_LENGTH, NOT_IMPLEMENTED = "not enough data", "too much data", "read length", "not implemented"
ROM_CODES = {CHECKSUM: 0x07, FAILED: 0x06, INFLATE: 0x0B, WRITE_VERIFY: 0x08, READ_LENGTH: 0x0A}  # else 0x05 bad message
ROM_BAD_MESSAGE = 0x05
STUB_CODES = {BAD_LENGTH: 0xC000, CHECKSUM: 0xC100, INVALID: 0xC300, FAILED: 0xC400, NOT_IN_FLASH_MODE: 0xC600,
              INFLATE: 0xC700, NOT_ENOUGH: 0xC800, TOO_MUCH: 0xC900, NOT_IMPLEMENTED: 0xFF00}

SYNC_LENGTH = 36  # 07 07 12 20 + 32 x 55
ROM_SYNC_VALUE = 0x20120707
READ_SLOW_BLOCK = 64
MAX_READ_PACKET = 4096
MAX_FRAME = 8 + 0x4000 + 0xFF  # the stub's FRAME_BUFFER_SIZE

Handler = Callable[[bytes, int, list[bytes]], tuple[int, bytes]]


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
        self._common: dict[int, Handler] = {
            SYNC: self._sync, READ_REG: self._read_reg, WRITE_REG: self._write_reg, SPI_SET_PARAMS: self._set_params,
            SPI_ATTACH: self._attach, CHANGE_BAUDRATE: self._change_baud, SPI_FLASH_MD5: self._md5,
            FLASH_BEGIN: self._flash_begin, FLASH_DEFL_BEGIN: self._flash_begin, FLASH_DATA: self._flash_data,
            FLASH_DEFL_DATA: self._defl_data, FLASH_END: self._flash_end, FLASH_DEFL_END: self._flash_end,
            MEM_BEGIN: self._mem_begin, MEM_DATA: self._mem_data, MEM_END: self._mem_end, GET_SECURITY_INFO: self._security_info}
        self._stub_only: dict[int, Handler | None] = {
            ERASE_FLASH: self._erase_flash, ERASE_REGION: self._erase_region, READ_FLASH: self._read_flash,
            RUN_USER_CODE: None}  # the stub sends no reply to RUN_USER_CODE
        self._rom_only: dict[int, Handler | None] = {READ_FLASH_SLOW: self._read_flash_slow}
        self.reset()

    def reset(self) -> None:
        """The chip came out of reset into download mode: the ROM runs, nothing is in progress."""
        self.stub = False
        self.exit: str | None = None
        self.power_loss: PowerLoss | None = None
        self._flash = LoaderFlash(self.flash)
        self._download: Download | None = None
        self._mem_left = 0
        self._read: _Read | None = None
        self._op = 0
        self._post: Callable[[list[bytes]], None] | None = None
        self._deferred: int | None = None  # the stub's error from the last post-process, sent to the next command
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
                self._refuse(out, op, INVALID)
            return
        if size != len(data):
            self._refuse(out, op, BAD_LENGTH)
            return
        if self._deferred is not None:
            self._reply(out, op, code=self._deferred)
            self._deferred = None
            return
        only = self._stub_only if self.stub else self._rom_only
        handler = only[op] if op in only else self._common.get(op, self._unknown)
        if handler is None:
            return
        self._op = op
        try:
            value, body = handler(data, chk, out)
        except Refused as refused:
            self._post = None
            self._refuse(out, op, refused.reason)
            return
        self._reply(out, op, value, body)
        post, self._post = self._post, None
        if post is not None:
            try:
                post(out)
            except Refused as refused:  # only the stub works after replying
                self._deferred = STUB_CODES.get(refused.reason, STUB_CODES[FAILED])

    def _reply(self, out: list[bytes], op: int, value: int = 0, data: bytes = b"", code: int = 0) -> None:
        if self.stub:
            body = data + code.to_bytes(2, "big")
        else:
            body = data + (bytes((1, code, 0, 0)) if code else bytes(4))
        out.append(encode(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _refuse(self, out: list[bytes], op: int, reason: str) -> None:
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
        _need(len(data) == 24)  # id, total size, block, sector, page, status mask
        self._flash.chip_size = struct.unpack_from("<I", data, 4)[0]
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
        digest = hashlib.md5(self._flash.read(addr, size))
        return 0, digest.digest() if self.stub else digest.hexdigest().encode()

    def _security_info(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        if not self.stub:
            raise Refused(INVALID)  # the ESP32 ROM predates GET_SECURITY_INFO; esptool falls back to the magic word
        _need(not data)
        raise Refused(NOT_IMPLEMENTED)

    def _unknown(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        raise Refused(INVALID)

    # --- RAM download: esptool's stub -------------------------------------------------------------

    def _mem_begin(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 16)
        self._mem_left = struct.unpack_from("<I", data)[0]
        return 0, b""

    def _mem_data(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        block = _data_block(data, chk, check_sum=not self.stub)  # the stub does not check MEM_DATA's checksum
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
        # Whatever was uploaded, the board now behaves as esptool's stub, which reads the flash id for the size.
        self.stub = True
        self._flash.chip_size = self.flash.size
        self._download = None
        out.append(encode(b"OHAI"))

    # --- flash download ---------------------------------------------------------------------------

    def _flash_begin(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) in ((16, 20) if self.stub else (16,)))  # the ESP32 ROM has no 5th (encrypt) word
        size, _blocks, _block_size, offset = struct.unpack_from("<IIII", data)
        inflater = zlib.decompressobj() if self._op == FLASH_DEFL_BEGIN else None
        self._download = None
        if self.stub:  # size: bytes to write, erased as they come
            self._download = self._flash.stub_begin(offset, size, inflater)
        else:  # size: bytes to erase now (deflate: rounded up to 1 KiB)
            self._download = self._flash.rom_begin(offset, size, inflater)
        return 0, b""

    def _flash_data(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        dl = self._in_flash_mode(data)
        block = _data_block(data, chk)
        if not self.stub:
            self._flash.rom_write(dl, block)  # the whole block, 0xFF padding included
        else:
            self._post = lambda out: self._flash.stub_write(dl, block[: dl.remaining])
        return 0, b""

    def _defl_data(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) >= 16)
        dl = self._in_flash_mode(data)
        _need(dl.inflater is not None, NOT_IN_FLASH_MODE)
        block = _data_block(data, chk)
        if not self.stub:
            self._flash.inflate(dl, block, self._flash.rom_write)
            return 0, b""

        def post(out: list[bytes]) -> None:
            self._flash.erase_ahead(dl)  # the stub erases ahead while it inflates
            self._flash.inflate(dl, block, self._flash.stub_write)
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

    def _in_flash_mode(self, data: bytes) -> Download:
        _need(len(data) >= 16, NOT_ENOUGH)
        _need(self._download is not None, NOT_IN_FLASH_MODE)
        return self._download

    # --- stub-only and ROM-only commands ---------------------------------------------------------

    def _erase_flash(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        self._flash.erase(0, self.flash.size)  # one chip-erase command
        return 0, b""

    def _erase_region(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 8)
        addr, size = struct.unpack("<II", data)
        _need(addr % 0x1000 == 0 and size % 0x1000 == 0)
        self._flash.stub_erase_region(addr, size)
        return 0, b""

    def _read_flash(self, data: bytes, chk: int, out: list[bytes]) -> tuple[int, bytes]:
        _need(len(data) == 16)
        addr, length, packet, _in_flight = struct.unpack("<IIII", data)

        def post(out: list[bytes]) -> None:  # after the OK reply: packets, each acknowledged, then the MD5
            _need(0 < packet <= MAX_READ_PACKET)
            self._flash.check(addr, length)
            self._read = _Read(addr, length, length, packet)
            self._read_next(out)
        self._post = post
        return 0, b""

    def _read_next(self, out: list[bytes]) -> None:
        rd = self._read
        if rd.left:
            chunk = self._flash.read(rd.addr, min(rd.left, rd.packet))
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
        return 0, self._flash.read(addr, length).ljust(READ_SLOW_BLOCK, b"\x00")  # always a 64-byte buffer


def _need(condition: object, reason: str = BAD_LENGTH) -> None:
    if not condition:
        raise Refused(reason)


def _data_block(data: bytes, chk: int, check_sum: bool = True) -> bytes:
    """The payload of a *_DATA command: u32 size, seq, 0, 0, then data; chk = 0xEF ^ every data byte."""
    _need(len(data) >= 16, NOT_ENOUGH)
    size = struct.unpack_from("<I", data)[0]
    block = data[16:]
    _need(size == len(block), TOO_MUCH)
    _need(not check_sum or _checksum(block) == chk & 0xFF, CHECKSUM)
    return block


def _checksum(data: bytes) -> int:
    """0xEF XOR every byte, folded as one big integer (a 16 KiB block in a few steps, not 16384)."""
    width = 1 << max(len(data) - 1, 0).bit_length()
    value = int.from_bytes(data.ljust(width, b"\0"), "little")
    bits = width * 8
    while bits > 8:
        bits //= 2
        value = (value >> bits) ^ (value & ((1 << bits) - 1))
    return value ^ 0xEF
