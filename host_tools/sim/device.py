"""Virtual boards on disk: create one, flash it like esptool would, read its state.

A board is a directory under the sim home (`$FOTA_HOME/sim/NAME`, default
`~/.fota/sim/NAME`):

    flash.bin     the whole SPI flash (4 MiB for `boards/sim`); its `vfs` partition holds
                  the LittleFS filesystem the board mounts as `/` (boot.py, main.py, ...)
    config.json   board name, chip id and revision, hardware revision, unique id
    tty           while it runs: a link to the REPL's pty; run.lock: the running supervisor
    rfc2217       while it runs: the URL of its RFC 2217 port (esptool --port rfc2217://127.0.0.1:N)

    board = SimDevice.create(home, "dev1", hw_rev="A")
    board.flash_app(image)         # writes ota_0 and erases otadata
    print(board.status().render())
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.esp import boards, espidf
from host_tools.esp.app_image import ImageError, Segment, build_app_image, parse_app_image
from host_tools.esp.partition_table import Partition, PartitionTable
from host_tools.sim import bootloader
from host_tools.sim.flash import Flash
from host_tools.sim.frozen import frozen_dir
from host_tools.sim.littlefs import BoardFs

BOOTLOADER_NOTE = b"fota sim: second-stage bootloader region (the bootloader is emulated by host_tools.sim)"


class SimError(FotaError):
    """A virtual board that does not exist, exists already, or cannot take an image."""


def sim_home(home: str | os.PathLike | None = None) -> Path:
    """Where virtual boards live: `home`, else $FOTA_HOME, else ~/.fota; plus /sim."""
    base = Path(home or os.environ.get("FOTA_HOME") or Path.home() / ".fota")
    return base / "sim"


@dataclass
class SlotStatus:
    partition: Partition
    valid: bool
    detail: str
    version: str = ""
    sha256: str = ""


@dataclass
class BoardStatus:
    name: str
    table: PartitionTable
    entries: list[espidf.OtaEntry]
    active: int
    next_boot: str
    slots: list[SlotStatus]

    def render(self) -> str:
        lines = [f"board {self.name}", "partition table:"]
        for p in self.table.partitions:
            lines.append(f"  {p.name:<9} {p.type_name():<4} {p.subtype_name():<8} 0x{p.offset:06x} 0x{p.size:06x}")
        lines.append("otadata:")
        for i, e in enumerate(self.entries):
            seq = "blank" if e.seq == espidf.SEQ_BLANK else str(e.seq)
            crc = "ok" if e.crc == espidf.ota_seq_crc(e.seq) else "bad"
            mark = "  <- active" if i == self.active else ""
            lines.append(f"  [{i}] seq={seq} state={e.state_name()} crc={crc}{mark}")
        lines.append(f"next boot: {self.next_boot}")
        lines.append("slots:")
        for s in self.slots:
            desc = f"version={s.version or '-'} sha256={s.sha256[:16]}" if s.valid else s.detail
            lines.append(f"  {s.partition.name}: {'valid' if s.valid else 'invalid'} {desc}")
        return "\n".join(lines)


class SimDevice:
    """One virtual board directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise SimError(f"no virtual board at {self.path}", hint="create it with: fota sim create NAME")
        self.config = json.loads((self.path / "config.json").read_text())
        self.strict = True

    name = property(lambda self: self.path.name)
    flash_path = property(lambda self: self.path / "flash.bin")
    repl_link = property(lambda self: self.path / "tty")
    rfc2217_file = property(lambda self: self.path / "rfc2217")

    @classmethod
    def open(cls, name: str, home=None) -> SimDevice:
        return cls(sim_home(home) / name)

    @classmethod
    def create(cls, name: str, home=None, *, board: str = "sim", hw_rev: str | None = None, uid: str | None = None) -> SimDevice:
        """A new board with erased flash, a bootloader region and the board's partition table."""
        definition = boards.load(board)
        path = sim_home(home) / name
        if path.exists():
            raise SimError(f"virtual board {name!r} exists already at {path}")
        path.mkdir(parents=True)
        config = {
            "board": definition.name,
            "chip_id": definition.chip_id,
            "chip_rev": definition.chip_rev,
            "partition_table_offset": definition.partition_table_offset,
            "hw_rev": hw_rev or definition.hw_revs[0],
            "uid": uid or hashlib.sha256(f"{name}".encode()).hexdigest()[:12],
            "heap": definition.heap,
        }
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        flash = Flash.create(path / "flash.bin", definition.flash_bytes)
        try:
            loader = build_app_image([Segment(0x3FFF0000, BOOTLOADER_NOTE)], chip_id=definition.chip_id)
            flash.write(definition.bootloader_offset, loader)
            flash.write(definition.partition_table_offset, definition.table.to_binary())
        finally:
            flash.close()
        return cls(path)

    def table(self, flash: Flash) -> PartitionTable:
        return bootloader.read_table(flash, self.config["partition_table_offset"])

    def flash_app(self, image: bytes) -> None:
        """What `esptool write-flash 0x10000 app.bin` after erasing otadata does: a first USB flash."""
        parse_app_image(image, chip_id=self.config["chip_id"])
        flash = Flash(self.flash_path)
        try:
            table = self.table(flash)
            slot = table.ota_slots()[0] if table.ota_slots() else table.find("factory")
            if len(image) > slot.size:
                raise ImageError(f"image of {len(image)} bytes does not fit {slot.name} ({slot.size} bytes)")
            flash.erase(slot.offset, -(-len(image) // 4096) * 4096)
            flash.write(slot.offset, image)
            otadata = table.otadata()
            if otadata is not None:
                flash.erase(otadata.offset, otadata.size)
        finally:
            flash.close()

    def rfc2217_url(self) -> str | None:
        """The RFC 2217 URL of the board's running supervisor; None when the board is not running."""
        try:
            url = self.rfc2217_file.read_text().strip()
        except FileNotFoundError:
            return None
        return url if self._supervised() else None

    def _supervised(self) -> bool:
        # A supervisor holds an exclusive flock on run.lock (host_tools.sim.runtime) while it runs.
        fd = os.open(self.path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def fs(self) -> BoardFs:
        """The board's flash filesystem from the host (the board must be off): `with board.fs() as fs: ...`."""
        return BoardFs.open(self.flash_path, self._file_table())

    def fs_partition(self) -> Partition:
        """The data partition the board mounts as `/`."""
        return next(p for p in self._file_table().partitions if p.name == "vfs")

    def _file_table(self) -> PartitionTable:
        with open(self.flash_path, "rb") as f:
            f.seek(self.config["partition_table_offset"])
            return PartitionTable.from_binary(f.read(0xC00))

    def write_file(self, name: str, content: str | bytes) -> None:
        """Put a file on the board's filesystem (what `mpremote fs cp` does on a running board)."""
        with self.fs() as fs:
            fs.write(name, content.encode() if isinstance(content, str) else content)

    def read_file(self, name: str) -> bytes | None:
        """A file of the board's filesystem, None when it is not there."""
        with self.fs() as fs:
            return fs.read(name) if fs.exists(name) else None

    def extract_frozen(self, flash: Flash, slot: Partition, unpack) -> Path:
        """The slot's frozen modules plus the board's own, unpacked once per image (shared by the boards of one home)."""
        head = flash.read(slot.offset, slot.size)

        def readinto(offset, buf):
            buf[:] = head[offset : offset + len(buf)]

        length = espidf.verify_image(readinto, slot.size, self.config["chip_id"], self.config["chip_rev"])
        return frozen_dir(self.path.parent, head[:length], unpack)

    def status(self) -> BoardStatus:
        """Partition table, otadata entries, which slot boots next, each slot's image."""
        flash = Flash(self.flash_path)
        try:
            table = self.table(flash)
            otadata = table.otadata()
            entries = bootloader.read_otadata(flash, otadata) if otadata else []
            slots = [self._slot_status(flash, p) for p in table.ota_slots()]
        finally:
            flash.close()
        active = espidf.active_index(entries) if entries else -1
        return BoardStatus(self.name, table, entries, active, _next_boot(self.flash_path, self.config), slots)

    def _slot_status(self, flash: Flash, part: Partition) -> SlotStatus:
        data = flash.read(part.offset, part.size)
        try:
            info = parse_app_image(data, chip_id=self.config["chip_id"], chip_rev=self.config["chip_rev"], slot_size=part.size)
        except ImageError as exc:
            return SlotStatus(part, False, "empty (erased)" if data[:1] == b"\xff" else str(exc))
        version = info.app_desc.version if info.app_desc else ""
        return SlotStatus(part, True, "", version, hashlib.sha256(data[: info.length]).hexdigest())

    def save_run_record(self, run) -> None:
        """Keep the last run's counters where `sim status` and tests can read them."""
        record = {"flash_ops": run.flash.ops, "faults": [f.message for f in run.flash.faults], "events": [[e.kind, e.detail] for e in run.events]}
        (self.path / "last-run.json").write_text(json.dumps(record, indent=1) + "\n")


def _next_boot(flash_path: Path, config: dict) -> str:
    # Run the bootloader itself on a scratch copy of the flash: exactly what the next boot picks.
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "flash.bin"
        shutil.copyfile(flash_path, scratch)
        flash = Flash(scratch, strict=False)
        try:
            result = bootloader.boot(flash, table_offset=config["partition_table_offset"], chip_id=config["chip_id"], chip_rev=config["chip_rev"])
        finally:
            flash.close()
    notes = [line.split(": ", 1)[1] for line in result.log if "Loaded app" not in line]
    where = result.slot.name if result.slot else "nothing bootable"
    return where + (f" ({'; '.join(notes)})" if notes else "")
