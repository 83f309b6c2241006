"""Targeted override of the `esp32` stub from micropython-esp32-stubs 1.29: only `Partition` is replaced.

Everything else in `esp32` (NVS, RMT, ULP, wake_on_*, ...) comes unchanged from the official stub,
which scripts/lint_firmware.sh copies to build/typings/_esp32_upstream.pyi after installing it.
pyright reads `typings/` (stubPath) before the installed stubs, so this file wins for `import esp32`.

Why: the official stub declares `Partition.__init__(self, id: str, ...)`, which flags the documented
idiom `Partition(Partition.RUNNING)`. The signatures below follow MicroPython v1.20..v1.28
`ports/esp32/esp32_partition.c` (see shared/reference/esp32-ota.md):
- `Partition(id, block_size=4096, /)`: id is `BOOT` (0), `RUNNING` (1) or a label.
- `find(type=TYPE_APP, subtype=0xff, label=None, block_size=4096)`: keywords allowed, returns a list.
- `info()` -> `(type, subtype, addr, size, label, encrypted)`.
- `readblocks`/`writeblocks` with an optional byte offset; `ioctl(op, arg)` answers ops 1..6 with an
  int and anything else with None. `readblocks` returns None (the official stub says bool).
"""

from typing import Final, List, Literal, Tuple, overload

from _esp32_upstream import *  # noqa: F403  (re-exports the rest of the official esp32 stub)
from _mpy_shed import AnyReadableBuf, AnyWritableBuf
from vfs import AbstractBlockDev

class Partition(AbstractBlockDev):
    """A partition of the flash; see the module docstring for what differs from the official stub."""

    BOOT: Final[int] = 0
    RUNNING: Final[int] = 1
    TYPE_APP: Final[int] = 0
    TYPE_DATA: Final[int] = 1
    def __init__(self, id: int | str, block_size: int = 4096, /) -> None: ...
    @staticmethod
    def find(
        type: int = 0, subtype: int = 0xFF, label: str | None = None, block_size: int = 4096
    ) -> List[Partition]: ...
    def info(self) -> Tuple[int, int, int, int, str, bool]: ...
    def readblocks(self, block_num: int, buf: AnyWritableBuf, offset: int = 0, /) -> None: ...
    @overload
    def writeblocks(self, block_num: int, buf: AnyReadableBuf, /) -> None:
        """Erase then program len(buf) bytes; offset and length must be multiples of 4096."""
    @overload
    def writeblocks(self, block_num: int, buf: AnyReadableBuf, offset: int, /) -> None:
        """Program without erasing (NOR: bits only go from 1 to 0)."""
    @overload
    def ioctl(self, op: Literal[1, 2, 3, 4, 5, 6], arg: int, /) -> int: ...
    @overload
    def ioctl(self, op: int, arg: int, /) -> int | None: ...
    def set_boot(self) -> None: ...
    def get_next_update(self) -> Partition: ...
    @classmethod
    def mark_app_valid_cancel_rollback(cls) -> None: ...
