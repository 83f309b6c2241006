"""The board's filesystem from the host, without booting it: LittleFS v2 on the `vfs` partition.

The board mounts that partition as `/` (`_boot`, like the ESP32 port); this
module reads and writes the same bytes in the flash file with littlefs-python,
so tests and `fota sim fs ...` can drop `main.py` on a board that is off. These
host accesses are not flash operations of the board (nothing counts or cuts
them): they stand for `mpremote fs cp` on a board that already booted once.

A blank partition is formatted the way the board's first boot does it
(`inisetup`: LittleFS v2 with 4096-byte blocks, then the default boot.py), so a
board prepared on the host boots like one that made its own filesystem.

    with BoardFs.open(flash_path, table) as fs:
        fs.write("main.py", b"print('hi')")
        print(fs.listdir("/"))
"""

from __future__ import annotations

import os
from pathlib import Path

from littlefs import LittleFS, LittleFSError, UserContext

from host_tools.errors import FotaError
from host_tools.esp.partition_table import PartitionTable

BLOCK_SIZE = 4096
# MicroPython's vfs.VfsLfs2 defaults (extmod/vfs_lfs.c): readsize, progsize, lookahead
READ_SIZE = PROG_SIZE = LOOKAHEAD = 32
DEFAULT_BOOT_PY = (
    b"# This file is executed on every boot (including wake-boot from deepsleep)\n"
    b"#import esp\n#esp.osdebug(None)\n#import webrepl\n#webrepl.start()\n"
)


class BoardFsError(FotaError):
    """No vfs partition, a filesystem that does not mount, a file that is not there."""


class _PartitionContext(UserContext):
    # littlefs-python block device over one region of the flash file
    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.offset, self.size = fd, offset, size

    def read(self, cfg, block, off, size):
        return bytearray(os.pread(self.fd, size, self.offset + block * cfg.block_size + off))

    def prog(self, cfg, block, off, data):
        at = self.offset + block * cfg.block_size + off
        old = os.pread(self.fd, len(data), at)
        os.pwrite(self.fd, bytes(a & b for a, b in zip(old, data)), at)  # NOR: bits only clear
        return 0

    def erase(self, cfg, block):
        os.pwrite(self.fd, b"\xff" * cfg.block_size, self.offset + block * cfg.block_size)
        return 0

    def sync(self, cfg):
        return 0


class BoardFs:
    """The mounted filesystem of one board's flash file."""

    def __init__(self, flash_path: Path, offset: int, size: int) -> None:
        self._fd = os.open(flash_path, os.O_RDWR)
        self._ctx = _PartitionContext(self._fd, offset, size)
        head = os.pread(self._fd, BLOCK_SIZE, offset)
        kwargs = dict(block_size=BLOCK_SIZE, block_count=size // BLOCK_SIZE, read_size=READ_SIZE, prog_size=PROG_SIZE,
                      lookahead_size=LOOKAHEAD)
        try:
            if head == b"\xff" * BLOCK_SIZE:  # never formatted: what the first boot's inisetup does
                self.fs = LittleFS(self._ctx, mount=False, **kwargs)
                self.fs.format()
                self.fs.mount()
                self.write("boot.py", DEFAULT_BOOT_PY)
            else:
                self.fs = LittleFS(self._ctx, **kwargs)
        except LittleFSError as exc:
            os.close(self._fd)
            raise BoardFsError(f"the vfs partition does not mount as LittleFS v2: {exc}") from None

    @classmethod
    def open(cls, flash_path: Path, table: PartitionTable) -> BoardFs:
        part = next((p for p in table.partitions if p.name == "vfs" and p.type_name() == "data"), None)
        if part is None:
            raise BoardFsError("the partition table has no data partition labelled vfs")
        return cls(flash_path, part.offset, part.size)

    def __enter__(self) -> BoardFs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            self.fs.unmount()
            os.close(self._fd)
            self._fd = -1

    def write(self, name: str, data: bytes) -> None:
        path = _path(name)
        parts = path.strip("/").split("/")[:-1]
        for i in range(len(parts)):
            d = "/" + "/".join(parts[: i + 1])
            if not self.exists(d):
                self.fs.mkdir(d)
        with self.fs.open(path, "wb") as f:
            f.write(data)

    def read(self, name: str) -> bytes:
        try:
            with self.fs.open(_path(name), "rb") as f:
                return f.read()
        except LittleFSError:
            raise BoardFsError(f"no file {name} on the board") from None

    def exists(self, name: str) -> bool:
        try:
            self.fs.stat(_path(name))
        except LittleFSError:
            return False
        return True

    def listdir(self, name: str = "/") -> list[str]:
        return sorted(self.fs.listdir(_path(name)))

    def remove(self, name: str) -> None:
        try:
            self.fs.remove(_path(name))
        except LittleFSError:
            raise BoardFsError(f"no file {name} on the board") from None


def _path(name: str) -> str:
    return "/" + name.lstrip("/") if name not in ("", "/") else "/"
