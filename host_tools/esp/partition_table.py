"""ESP-IDF partition tables: the CSV that boards ship and the binary the chip reads.

The binary format is what `gen_esp32part.py` writes at 0x8000: 32-byte entries
`'<2sBBLL16sL'` (magic AA 50, type, subtype, offset, size, label, flags), then an
MD5 entry (EB EB, 14 x FF, MD5 of the entries before it), padded with 0xFF to 0xC00.

    table = PartitionTable.from_csv(Path("boards/sim/partitions.csv").read_text())
    blob = table.to_binary()
    assert PartitionTable.from_binary(blob) == table
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from host_tools.errors import FotaError

ENTRY_FORMAT = "<2sBBLL16sL"
ENTRY_SIZE = 32
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
TABLE_MAX_LENGTH = 0xC00
TABLE_OFFSET = 0x8000

TYPE_APP = 0x00
TYPE_DATA = 0x01
TYPES = {"app": TYPE_APP, "data": TYPE_DATA}

APP_SUBTYPES = {"factory": 0x00, "test": 0x20, **{f"ota_{i}": 0x10 + i for i in range(16)}}
DATA_SUBTYPES = {
    "ota": 0x00,
    "phy": 0x01,
    "nvs": 0x02,
    "coredump": 0x03,
    "nvs_keys": 0x04,
    "efuse": 0x05,
    "undefined": 0x06,
    "esphttpd": 0x80,
    "fat": 0x81,
    "spiffs": 0x82,
    "littlefs": 0x83,
}
SUBTYPES = {TYPE_APP: APP_SUBTYPES, TYPE_DATA: DATA_SUBTYPES}
APP_ALIGN = 0x10000
DATA_ALIGN = 0x1000
FLAG_ENCRYPTED = 0x1
FLAG_READONLY = 0x2


class PartitionTableError(FotaError):
    """A partition table (CSV or binary) that ESP-IDF would not accept."""


@dataclass(frozen=True)
class Partition:
    """One row of a partition table, with absolute flash offsets."""

    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def is_app(self) -> bool:
        return self.type == TYPE_APP

    @property
    def ota_index(self) -> int | None:
        """N for an ota_N app partition, else None."""
        if self.type == TYPE_APP and 0x10 <= self.subtype < 0x20:
            return self.subtype - 0x10
        return None

    @property
    def end(self) -> int:
        return self.offset + self.size

    def subtype_name(self) -> str:
        for name, value in SUBTYPES.get(self.type, {}).items():
            if value == self.subtype:
                return name
        return f"0x{self.subtype:02x}"

    def type_name(self) -> str:
        return {TYPE_APP: "app", TYPE_DATA: "data"}.get(self.type, f"0x{self.type:02x}")


@dataclass(frozen=True)
class PartitionTable:
    """An ordered list of partitions, convertible to and from CSV and binary."""

    partitions: tuple[Partition, ...] = field(default_factory=tuple)

    def find(self, name: str) -> Partition:
        for part in self.partitions:
            if part.name == name:
                return part
        raise PartitionTableError(f"no partition named {name!r}")

    def ota_slots(self) -> list[Partition]:
        """The ota_N app partitions, in N order."""
        slots = [p for p in self.partitions if p.ota_index is not None]
        return sorted(slots, key=lambda p: p.subtype)

    def otadata(self) -> Partition | None:
        for part in self.partitions:
            if part.type == TYPE_DATA and part.subtype == DATA_SUBTYPES["ota"]:
                return part
        return None

    @classmethod
    def from_csv(cls, text: str, table_offset: int = TABLE_OFFSET) -> PartitionTable:
        """Parse gen_esp32part CSV; empty offsets follow the previous partition, aligned."""
        rows = []
        next_offset = table_offset + 0x1000
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            part = _parse_row(line, lineno, next_offset)
            rows.append(part)
            next_offset = part.end
        table = cls(tuple(rows))
        table.validate()
        return table

    def validate(self, flash_size: int | None = None) -> None:
        """The checks gen_esp32part makes: alignment, overlaps, unique names, fits flash."""
        names = set()
        last_end = 0
        for part in sorted(self.partitions, key=lambda p: p.offset):
            if part.name in names:
                raise PartitionTableError(f"partition name {part.name!r} is used twice")
            names.add(part.name)
            if part.is_app and part.offset % APP_ALIGN:
                raise PartitionTableError(f"app partition {part.name} at 0x{part.offset:x} is not 64 KiB aligned")
            if part.offset % DATA_ALIGN or part.size % DATA_ALIGN:
                raise PartitionTableError(f"partition {part.name} is not 4 KiB aligned")
            if part.offset < last_end:
                raise PartitionTableError(f"partition {part.name} overlaps the one before it")
            if flash_size is not None and part.end > flash_size:
                raise PartitionTableError(f"partition {part.name} ends at 0x{part.end:x}, beyond the flash")
            last_end = part.end

    def to_binary(self) -> bytes:
        """The 0xC00-byte table ESP-IDF reads at 0x8000."""
        out = bytearray()
        for part in self.partitions:
            label = part.name.encode()
            if len(label) > 16:
                raise PartitionTableError(f"label {part.name!r} is longer than 16 bytes")
            out += struct.pack(
                ENTRY_FORMAT, ENTRY_MAGIC, part.type, part.subtype, part.offset, part.size, label, part.flags
            )
        out += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(out).digest()
        if len(out) > TABLE_MAX_LENGTH:
            raise PartitionTableError("partition table is longer than 0xC00 bytes")
        return bytes(out + b"\xff" * (TABLE_MAX_LENGTH - len(out)))

    @classmethod
    def from_binary(cls, data: bytes) -> PartitionTable:
        """Parse the binary table, checking the MD5 entry as esp_partition does."""
        parts = []
        for pos in range(0, min(len(data), TABLE_MAX_LENGTH), ENTRY_SIZE):
            entry = data[pos : pos + ENTRY_SIZE]
            if entry[:2] == MD5_MAGIC:
                if hashlib.md5(data[:pos]).digest() != entry[16:]:
                    raise PartitionTableError("partition table MD5 mismatch")
                return cls(tuple(parts))
            if entry == b"\xff" * ENTRY_SIZE:
                break
            magic, ptype, subtype, offset, size, label, flags = struct.unpack(ENTRY_FORMAT, entry)
            if magic != ENTRY_MAGIC:
                raise PartitionTableError(f"bad partition entry magic at +0x{pos:x}")
            name = label.rstrip(b"\x00").decode(errors="replace")
            parts.append(Partition(name, ptype, subtype, offset, size, flags))
        raise PartitionTableError("partition table has no MD5 entry")


def _parse_int(text: str) -> int:
    text = text.strip().lower()
    for suffix, mult in (("k", 1024), ("m", 1024 * 1024)):
        if text.endswith(suffix):
            return int(text[:-1], 0) * mult
    return int(text, 0)


def _parse_row(line: str, lineno: int, next_offset: int) -> Partition:
    cells = [c.strip() for c in line.split(",")]
    cells += [""] * (6 - len(cells))
    name, type_text, subtype_text, offset_text, size_text, flags_text = cells[:6]
    try:
        ptype = TYPES[type_text] if type_text in TYPES else int(type_text, 0)
        table = SUBTYPES.get(ptype, {})
        subtype = table[subtype_text] if subtype_text in table else int(subtype_text, 0)
        align = APP_ALIGN if ptype == TYPE_APP else DATA_ALIGN
        offset = _parse_int(offset_text) if offset_text else -(-next_offset // align) * align
        size = _parse_int(size_text)
    except (KeyError, ValueError) as exc:
        raise PartitionTableError(f"partitions CSV line {lineno}: cannot parse {line!r}") from exc
    flags = 0
    for flag in filter(None, (f.strip() for f in flags_text.split(":"))):
        if flag == "encrypted":
            flags |= FLAG_ENCRYPTED
        elif flag == "readonly":
            flags |= FLAG_READONLY
        else:
            raise PartitionTableError(f"partitions CSV line {lineno}: unknown flag {flag!r}")
    return Partition(name, ptype, subtype, offset, size, flags)
