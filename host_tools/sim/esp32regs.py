"""What READ_REG and WRITE_REG reach on a virtual ESP32 in download mode.

The words esptool reads to identify the chip (esptool targets/esp32.py), and SPI0's
user-command engine wired to the board's flash, which is how esptool asks the flash
chip for its JEDEC id (9F), its SFDP table (5A) and resets it (66, 99): it sets the
USR registers with WRITE_REG, writes CMD bit 18, polls it and reads W0
(loader.py `run_spiflash_command`). Every other address is plain memory that reads 0.

    regs = Esp32Registers(mac=bytes.fromhex("240ac4123456"), jedec_id=0x1640EF)
    regs.read(0x40001000)          # 0x00F01D83, the ESP32's chip-detect word
"""

from __future__ import annotations

import struct

# targets/esp32.py (ESP32ROM) and loader.py
CHIP_DETECT_REG = 0x40001000
CHIP_DETECT_MAGIC = 0x00F01D83
EFUSE_BASE = 0x3FF5A000  # EFUSE_BLK0_RDATA0_REG; read_efuse(n) reads EFUSE_BASE + 4n
UART0_CLKDIV_REG = 0x3FF40014
APB_CTL_DATE_REG = 0x3FF6607C  # bit 31: chip revision bit 2
RTC_CALI_REG = 0x3FF5F06C  # RTCCALICFG1: TIMERS_RTC_CALI_VALUE at bits 7..31
ROM_START, ROM_END = 0x40000000, 0x40070000  # IROM: writes are lost

# SPI0 (SPI_REG_BASE 0x3FF42000) and its USR flags (loader.py run_spiflash_command)
SPI_BASE = 0x3FF42000
SPI_CMD, SPI_ADDR, SPI_USR, SPI_USR2, SPI_MISO_DLEN, SPI_W0 = (SPI_BASE + o for o in (0x00, 0x04, 0x1C, 0x24, 0x2C, 0x80))
SPI_W_COUNT = 16
SPI_CMD_USR = 1 << 18
SPI_USR_ADDR = 1 << 30
SPI_USR_MISO = 1 << 28

# SPI NOR commands esptool sends through SPI0
FLASH_RDID = 0x9F
FLASH_RDSFDP = 0x5A
FLASH_READ_STATUS = (0x05, 0x35, 0x15)

XTAL_HZ = 40_000_000
_CK8M_FREQ = 64  # eFuse word 4 [7:0]; with _RTC_CALI the ROM's crystal estimate is exactly 40 MHz
_RTC_CALI = 1600  # cali * 15625 * ck8m / 40 = 40e6 (ESP32ROM.get_rom_cal_crystal_freq)


def mac_crc8(mac: bytes) -> int:
    """The ROM's esp_crc8 over the factory MAC (espefuse efuse/esp32/fields.py `calc_crc`)."""
    crc = 0
    for byte in mac:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def efuse_words(mac: bytes, chip_rev: int) -> list[int]:
    """BLK0 read words 0..6 of an ESP32-D0WD(-V3) with this factory MAC and revision (major*100 + minor).

    Word 1 holds MAC bytes 2..5, word 2 bytes 0..1 and the CRC (esptool `read_mac`); word 3 package
    D0WD, 240 MHz rated, revision bit 0; word 5 revision bit 1 and the minor revision."""
    major, minor = divmod(chip_rev, 100)
    rev_bits = {0: 0, 1: 1, 2: 3, 3: 7}.get(major, 7)  # (bit2, bit1, bit0) as get_major_chip_version decodes them
    word1 = int.from_bytes(mac[2:6], "big")
    word2 = (mac_crc8(mac) << 16) | int.from_bytes(mac[0:2], "big")
    word3 = (1 << 9) | (1 << 13) | ((rev_bits & 1) << 15)
    word4 = _CK8M_FREQ
    word5 = ((rev_bits >> 1 & 1) << 20) | ((minor & 3) << 24)
    return [0, word1, word2, word3, word4, word5, 0]


def sfdp_table(size: int) -> bytes:
    """A JESD216 header with one parameter header and a basic table holding the density."""
    header = b"SFDP" + bytes((0x06, 0x01, 0x00, 0xFF))
    param = bytes((0x00, 0x06, 0x01, 0x09, 0x10, 0x00, 0x00, 0xFF))  # basic table: 9 dwords at 0x10
    basic = struct.pack("<II", 0xFFF320E5, size * 8 - 1) + b"\xff" * 28
    return header + param + basic


def jedec_for_size(size: int) -> int:
    """A Winbond-style id (EF 40 nn, nn = log2 of the size) as esptool's flash_id() returns it: mfr | type << 8 | cap << 16."""
    return 0xEF | 0x40 << 8 | (size.bit_length() - 1) << 16


class Esp32Registers:
    """The memory map READ_REG/WRITE_REG see: fixed chip words, UART0's divider for the current baud, SPI0."""

    def __init__(self, mac: bytes, jedec_id: int, flash_size: int, chip_rev: int = 300) -> None:
        self.baud = 115200  # what the ROM auto-bauded to; esptool derives the crystal from this divider
        self.jedec_id = jedec_id
        self._sfdp = sfdp_table(flash_size)
        self._fixed = {CHIP_DETECT_REG: CHIP_DETECT_MAGIC, RTC_CALI_REG: _RTC_CALI << 7,
                       APB_CTL_DATE_REG: (1 << 31 if chip_rev >= 300 else 0) | 0x16042000}
        for n, word in enumerate(efuse_words(mac, chip_rev)):
            self._fixed[EFUSE_BASE + 4 * n] = word
        self._mem: dict[int, int] = {}

    def reset(self) -> None:
        self._mem.clear()

    def read(self, addr: int) -> int:
        if addr == UART0_CLKDIV_REG:
            return round(XTAL_HZ / max(self.baud, 1)) & 0xFFFFF
        if addr in self._fixed:
            return self._fixed[addr]
        return self._mem.get(addr, 0)

    def write(self, addr: int, value: int, mask: int = 0xFFFFFFFF) -> None:
        """A WRITE_REG entry: the masked bits of `value` replace those of the word (the stub's `s_write_reg`)."""
        if addr in self._fixed or ROM_START <= addr < ROM_END:
            return
        if mask != 0xFFFFFFFF:
            value = (value & mask) | (self.read(addr) & ~mask)
        self._mem[addr] = value & 0xFFFFFFFF
        if addr == SPI_CMD and value & SPI_CMD_USR:
            self._spi_user_command()

    def _spi_user_command(self) -> None:
        # The command completes at once: the first poll of CMD reads bit 18 clear.
        usr = self._mem.get(SPI_USR, 0)
        command = self._mem.get(SPI_USR2, 0) & 0xFF
        addr = self._mem.get(SPI_ADDR, 0) >> 8 if usr & SPI_USR_ADDR else 0
        nbytes = ((self._mem.get(SPI_MISO_DLEN, 0) & 0xFFFFFF) + 8) // 8 if usr & SPI_USR_MISO else 0
        reply = self._flash_reply(command, addr, min(nbytes, 4 * SPI_W_COUNT))
        for i in range(0, len(reply), 4):
            word = SPI_W0 + i
            old = self._mem.get(word, 0).to_bytes(4, "little")
            chunk = reply[i : i + 4]
            self._mem[word] = int.from_bytes(chunk + old[len(chunk) :], "little")
        self._mem[SPI_CMD] = self._mem[SPI_CMD] & ~SPI_CMD_USR

    def _flash_reply(self, command: int, addr: int, nbytes: int) -> bytes:
        # What the flash chip shifts out on MISO; commands without a reply (66/99 reset, write enable, ...) do nothing here.
        if command == FLASH_RDID:
            data = (self.jedec_id & 0xFFFFFF).to_bytes(3, "little")
        elif command == FLASH_RDSFDP:
            data = self._sfdp[addr : addr + nbytes]
        elif command in FLASH_READ_STATUS:
            data = bytes(nbytes)
        else:
            data = b""
        return (data + b"\xff" * nbytes)[:nbytes]
