"""ESP32 app images: build them byte for byte as ESP-IDF does, and read them back.

Layout (esp_image_format.h): a 24-byte header, segments `{load_addr, data_len}` +
data, zero padding so that one XOR checksum byte (seed 0xEF) ends a 16-byte block,
then the SHA-256 of everything before it when `hash_appended`. The first segment
is flash-mapped rodata (DROM) and starts with the 256-byte `esp_app_desc_t`, so the
descriptor sits at file offset 0x20.

    image = build_app_image([Segment(DROM_BASE, app_desc(...) + payload)], chip_id=0)
    info = parse_app_image(image)          # raises ImageError on a bad image
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from host_tools.errors import FotaError
from host_tools.esp import espidf

CHIP_IDS = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9, "esp32c2": 0xC, "esp32c6": 0xD, "esp32h2": 0x10, "esp32p4": 0x12}
DROM_BASE = 0x3F400020  # 0x20 into a 64 KiB page, like the file offset of the first segment
DRAM_BASE = 0x3FFB0000
IRAM_ENTRY = 0x40080400
APP_DESC_SIZE = 256
APP_DESC_FORMAT = "<IIII32s32s16s16s32s32sHHB"  # magic .. app_elf_sha256, min/max eFuse blk rev, mmu page
SPI_MODE_DIO = 2
FLASH_FREQ_40M = 0
FLASH_SIZE_CODES = {"1MB": 0, "2MB": 1, "4MB": 2, "8MB": 3, "16MB": 4}


class ImageError(FotaError):
    """An app image that the bootloader would refuse, or a file that is no app image."""


@dataclass(frozen=True)
class Segment:
    load_addr: int
    data: bytes


@dataclass(frozen=True)
class AppDesc:
    """The fields of esp_app_desc_t that people read."""

    secure_version: int
    version: str
    project_name: str
    time: str
    date: str
    idf_ver: str
    app_elf_sha256: bytes


@dataclass(frozen=True)
class AppImageInfo:
    chip_id: int
    segments: tuple[Segment, ...]
    entry_addr: int
    hash_appended: bool
    length: int
    app_desc: AppDesc | None


def app_desc(
    *,
    version: str = "",
    project_name: str = "",
    time: str = "00:00:00",
    date: str = "Jan  1 2026",
    idf_ver: str = "v5.5.1",
    secure_version: int = 0,
    elf_sha256: bytes = b"\x00" * 32,
) -> bytes:
    """A 256-byte esp_app_desc_t. MicroPython builds leave version and project_name empty."""
    fields = [version, project_name, time, date, idf_ver]
    for text in fields:
        if not text.isascii():
            raise ImageError(f"app descriptor strings must be ASCII: {text!r}")
    packed = struct.pack(
        APP_DESC_FORMAT,
        espidf.APP_DESC_MAGIC,
        secure_version,
        0,
        0,
        version.encode()[:31],
        project_name.encode()[:31],
        time.encode()[:15],
        date.encode()[:15],
        idf_ver.encode()[:31],
        elf_sha256,
        0,
        199,  # CONFIG_ESP_EFUSE_BLOCK_REV_MAX_FULL
        16,  # log2 of the 64 KiB MMU page
    )
    return packed.ljust(APP_DESC_SIZE, b"\x00")


def build_app_image(
    segments: list[Segment],
    *,
    chip_id: int = 0,
    entry_addr: int = IRAM_ENTRY,
    flash_size: str = "4MB",
    min_chip_rev_full: int = 0,
    max_chip_rev_full: int = 399,
    hash_appended: bool = True,
) -> bytes:
    """Assemble an app image; segment lengths are padded to 4 bytes as esptool does."""
    if len(segments) > espidf.MAX_SEGMENTS:
        raise ImageError("an app image holds at most 16 segments")
    header = struct.pack(
        "<BBBBIBBBBHBHH4sB",
        espidf.IMAGE_MAGIC,
        len(segments),
        SPI_MODE_DIO,
        (FLASH_SIZE_CODES[flash_size] << 4) | FLASH_FREQ_40M,
        entry_addr,
        0xEE,
        0,
        0,
        0,
        chip_id,
        min_chip_rev_full // 100,
        min_chip_rev_full,
        max_chip_rev_full,
        b"\x00" * 4,
        1 if hash_appended else 0,
    )
    body = bytearray(header)
    checksum = espidf.CHECKSUM_SEED
    for seg in segments:
        data = seg.data + b"\x00" * (-len(seg.data) % 4)
        body += struct.pack("<II", seg.load_addr, len(data)) + data
        for byte in data:
            checksum ^= byte
    body += b"\x00" * (15 - len(body) % 16) + bytes([checksum])
    if hash_appended:
        body += hashlib.sha256(body).digest()
    return bytes(body)


def parse_app_image(image: bytes, *, chip_id: int | None = None, chip_rev: int = 300, slot_size: int | None = None) -> AppImageInfo:
    """Validate an app image as esp_image_verify does and describe it."""
    if len(image) < espidf.HEADER_SIZE or image[0] != espidf.IMAGE_MAGIC:
        raise ImageError("not an ESP app image (no 0xE9 magic byte at offset 0)")
    image_chip = struct.unpack_from("<H", image, 12)[0]
    limit = slot_size if slot_size is not None else len(image)

    def readinto(offset: int, buf) -> None:
        chunk = image[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        if len(chunk) < len(buf):
            raise ImageError(f"image is truncated at 0x{offset + len(chunk):x}")

    try:
        length = espidf.verify_image(readinto, limit, image_chip if chip_id is None else chip_id, chip_rev)
    except espidf.ImageInvalid as exc:
        raise ImageError(f"invalid app image: {exc}") from exc
    segments, pos = [], espidf.HEADER_SIZE
    for _ in range(image[1]):
        addr, size = struct.unpack_from("<II", image, pos)
        segments.append(Segment(addr, image[pos + 8 : pos + 8 + size]))
        pos += 8 + size
    return AppImageInfo(
        chip_id=image_chip,
        segments=tuple(segments),
        entry_addr=struct.unpack_from("<I", image, 4)[0],
        hash_appended=image[23] == 1,
        length=length,
        app_desc=_read_app_desc(image),
    )


def _read_app_desc(image: bytes) -> AppDesc | None:
    off = espidf.APP_DESC_OFFSET
    if len(image) < off + APP_DESC_SIZE:
        return None
    fields = struct.unpack_from(APP_DESC_FORMAT, image, off)
    if fields[0] != espidf.APP_DESC_MAGIC:
        return None

    def text(raw: bytes) -> str:
        return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")

    return AppDesc(
        secure_version=fields[1],
        version=text(fields[4]),
        project_name=text(fields[5]),
        time=text(fields[6]),
        date=text(fields[7]),
        idf_ver=text(fields[8]),
        app_elf_sha256=fields[9],
    )
