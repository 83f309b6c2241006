"""Guards `fota sign` applies before it signs: sequence jumps, hardware revisions, key files, key lists.

A sequence number is a one-way door: a device never accepts a lower one again, so one typo
(`--sequence 4294967295`) would pin a fleet forever. The last sequence signed per board is
kept beside the key (`<key>.sequences.json`); a jump of more than SEQUENCE_JUMP_MAX above it
is refused unless forced:

    history = SequenceHistory.beside(Path("keys/release.pem"))
    history.check("sim", 12, force=False)      # FotaError when too far above the last
    ...sign...
    history.record("sim", 12)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import FotaError

SEQUENCE_MAX = 0xFFFFFFFF  # manifest sequence and esp_app_desc_t.secure_version are u32
SEQUENCE_JUMP_MAX = 100  # more than this above the last signed sequence needs --force


class GuardError(FotaError):
    """A signing request refused before anything was signed."""


@dataclass
class SequenceHistory:
    """The last sequence signed per board, in a small JSON file beside the signing key."""

    path: Path

    @classmethod
    def beside(cls, key_path: Path) -> SequenceHistory:
        return cls(key_path.with_name(key_path.name + ".sequences.json"))

    def _load(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.path.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError) as exc:
            raise GuardError(f"{self.path}: unreadable sequence history ({exc})") from exc

    def last(self, board: str) -> int:
        return self._load().get(board, 0)

    def check(self, board: str, sequence: int, *, force: bool = False) -> None:
        if not 1 <= sequence <= SEQUENCE_MAX:
            raise GuardError(f"sequence {sequence} is outside 1..{SEQUENCE_MAX}")
        last = self.last(board)
        if sequence - last > SEQUENCE_JUMP_MAX and not force:
            raise GuardError(
                f"sequence {sequence} is {sequence - last} above the last one signed for {board} ({last}); "
                "devices never accept a lower one again",
                hint=f"use {last + 1}, or --force if the jump is meant",
            )

    def record(self, board: str, sequence: int) -> None:
        seen = self._load()
        seen[board] = max(seen.get(board, 0), sequence)
        self.path.write_text(json.dumps(seen, indent=2, sort_keys=True) + "\n")


def hw_revs_choice(revs: list[str]) -> tuple[str, ...]:
    """The hardware revisions a package is for: an explicit choice, '*' only when asked for."""
    if not revs:
        raise GuardError("no hardware revision given", hint="--hw-rev A (repeatable), or --hw-rev '*' for every revision")
    return tuple(revs)
