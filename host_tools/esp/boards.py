"""Board definitions are data: `boards/<name>/board.json` plus its partitions.csv.

    board = boards.load("sim")
    board.table.ota_slots()[0].size     # 0x180000
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.esp.partition_table import PartitionTable

# boards/ of the checkout; an installed wheel carries a copy in <prefix>/share/fota/boards (pyproject data-files).
BOARDS_DIR = Path(__file__).resolve().parents[2] / "boards"
if not BOARDS_DIR.is_dir():
    BOARDS_DIR = Path(sys.prefix) / "share" / "fota" / "boards"


class BoardError(FotaError):
    """An unknown board, or a board definition that contradicts itself."""


@dataclass(frozen=True)
class BoardDef:
    name: str
    chip: str
    chip_id: int
    chip_rev: int
    flash_bytes: int
    bootloader_offset: int
    partition_table_offset: int
    hw_revs: tuple[str, ...]
    heap: str
    table: PartitionTable
    path: Path

    @property
    def slot_size(self) -> int:
        return min(p.size for p in self.table.ota_slots())


def available() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob("*/board.json"))


def load(name: str) -> BoardDef:
    """Read boards/<name>/ and check that its table fits its flash."""
    path = BOARDS_DIR / name
    meta_file = path / "board.json"
    if not meta_file.exists():
        raise BoardError(f"unknown board {name!r}", hint=f"known boards: {', '.join(available())}")
    meta = json.loads(meta_file.read_text())
    table = PartitionTable.from_csv((path / meta.get("partitions", "partitions.csv")).read_text(), meta["partition_table_offset"])
    table.validate(meta["flash_bytes"])
    board = BoardDef(
        name=meta["name"],
        chip=meta["chip"],
        chip_id=meta["chip_id"],
        chip_rev=meta.get("chip_rev", 300),
        flash_bytes=meta["flash_bytes"],
        bootloader_offset=meta["bootloader_offset"],
        partition_table_offset=meta["partition_table_offset"],
        hw_revs=tuple(meta.get("hw_revs", ["A"])),
        heap=meta.get("heap", "128k"),
        table=table,
        path=path,
    )
    if meta.get("slot_size") not in (None, board.slot_size):
        raise BoardError(f"board {name}: slot_size {meta['slot_size']} does not match partitions.csv ({board.slot_size})")
    return board
