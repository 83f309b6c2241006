"""NOR flash backed by a file: 4 KiB sector erase, bit-clearing writes, power cuts.

Every erase and every write is one counted operation. A `PowerPlan` may say
"lose power just before operation N", optionally tearing that operation (a
prefix of it lands, the byte where it stops lands partly); the file then holds
exactly what the chip would hold, and `PowerLoss` is raised to the caller.

In strict mode a write that would need to turn a 0 bit into 1 (writing over
unerased data) is recorded as a fault: the chip silently ANDs, the board says so.

    flash = Flash(path)            # an existing image file
    flash.erase(0xD000, 0x1000)
    flash.write(0xD000, entry)
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.errors import FotaError

SECTOR_SIZE = 0x1000


class FlashError(FotaError):
    """A flash operation outside the chip or against its erase granularity."""


class PowerLoss(Exception):
    """Power was cut before operation `op`; nothing after it happened."""

    def __init__(self, op: int) -> None:
        super().__init__(f"power lost before flash operation {op}")
        self.op = op


@dataclass
class PowerPlan:
    """When to cut power: before operation `cut_before` (1-based, counted over boots)."""

    cut_before: int | None = None
    tear: bool = False
    seed: int = 0


@dataclass(frozen=True)
class FlashTiming:
    """How long operations take; ESP32 defaults are ESP-IDF's flash test floors
    (shared/reference/esp32-ota.md): erase 45 KB/s, write 754 KB/s; reads ~10 MB/s."""

    erase_bytes_per_s: float = 45_000
    write_bytes_per_s: float = 754_000
    read_bytes_per_s: float = 10_000_000

    def delay(self, kind: str, length: int) -> None:
        rate = {"erase": self.erase_bytes_per_s, "write": self.write_bytes_per_s, "read": self.read_bytes_per_s}[kind]
        time.sleep(length / rate)


ESP32_TIMING = FlashTiming()


@dataclass
class FlashFault:
    op: int
    addr: int
    message: str


@dataclass
class Flash:
    """The chip: `ops` counts completed erases and writes since the plan was set."""

    path: Path
    strict: bool = True
    plan: PowerPlan = field(default_factory=PowerPlan)
    ops: int = 0
    faults: list[FlashFault] = field(default_factory=list)
    log: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, addr, length) of each completed op
    timing: FlashTiming | None = None  # None: as fast as the host allows

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.size = self.path.stat().st_size
        self._fd = os.open(self.path, os.O_RDWR)

    @classmethod
    def create(cls, path: Path, size: int, **kwargs) -> Flash:
        """A new, fully erased chip of `size` bytes."""
        with open(path, "wb") as f:
            f.write(b"\xff" * size)
        return cls(path, **kwargs)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, addr: int, length: int) -> bytes:
        self._check_range(addr, length)
        if self.timing:
            self.timing.delay("read", length)
        return os.pread(self._fd, length, addr)

    def erase(self, addr: int, length: int) -> None:
        """Erase whole 4 KiB sectors to 0xFF (one counted operation)."""
        if addr % SECTOR_SIZE or length % SECTOR_SIZE:
            raise FlashError(f"erase 0x{addr:x}+0x{length:x} is not sector aligned")
        self._check_range(addr, length)
        new = b"\xff" * length
        self._operate(addr, new, os.pread(self._fd, length, addr), "erase")

    def write(self, addr: int, data: bytes) -> None:
        """Program bytes: each bit can only go from 1 to 0 (one counted operation)."""
        self._check_range(addr, len(data))
        old = os.pread(self._fd, len(data), addr)
        n = len(data)
        new = (int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(n, "little")
        if self.strict and new != bytes(data):
            bad = next(i for i, (n, d) in enumerate(zip(new, data)) if n != d)
            self.faults.append(
                FlashFault(self.ops + 1, addr + bad, f"write over unerased data at 0x{addr + bad:x}")
            )
        self._operate(addr, new, old, "write")

    def _operate(self, addr: int, new: bytes, old: bytes, kind: str) -> None:
        op = self.ops + 1
        if self.timing:
            self.timing.delay(kind, len(new))
        if self.plan.cut_before is not None and op == self.plan.cut_before:
            if self.plan.tear:
                self._pwrite(addr, _torn(old, new, random.Random(self.plan.seed * 1_000_003 + op)))
            raise PowerLoss(op)
        self._pwrite(addr, new)
        self.ops = op
        self.log.append((kind, addr, len(new)))

    def ops_in(self, start: int, end: int) -> int:
        """Completed operations that touched [start, end): e.g. the filesystem's share of an update."""
        return sum(1 for _, addr, n in self.log if addr < end and addr + n > start)

    def _pwrite(self, addr: int, data: bytes) -> None:
        os.pwrite(self._fd, data, addr)

    def _check_range(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise FlashError(f"0x{addr:x}+0x{length:x} is outside the {self.size}-byte flash")


def _torn(old: bytes, new: bytes, rng: random.Random) -> bytes:
    # A prefix of the operation completed; in the byte where it stopped, some bits did.
    if not new:
        return old
    cut = rng.randrange(len(new))
    partial = old[cut] ^ ((old[cut] ^ new[cut]) & rng.randrange(256))
    return new[:cut] + bytes([partial]) + old[cut + 1 :]
