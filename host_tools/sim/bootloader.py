"""The ESP-IDF second-stage bootloader's slot choice, with app rollback enabled.

Follows `bootloader_utility_get_selected_boot_partition()` and
`bootloader_utility_load_boot_image()` (ESP-IDF v5.5.1,
CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y, as in every MicroPython ESP32 build):

1. every otadata entry in PENDING_VERIFY is rewritten as ABORTED;
2. the valid entry with the larger sequence number selects slot (seq - 1) % N;
3. a selected NEW entry is rewritten as PENDING_VERIFY;
4. an image that fails verification is skipped for the next slot (down, then up)
   without touching otadata; blank otadata boots ota_0 and writes {seq 1, VALID}.

Every otadata rewrite is an erase plus a 32-byte write on the flash, so a power
cut can land inside the bootloader too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from host_tools.esp import espidf
from host_tools.esp.partition_table import Partition, PartitionTable, PartitionTableError
from host_tools.sim.flash import Flash

FACTORY_INDEX = -1


@dataclass
class BootResult:
    """What the bootloader loaded (`slot` None: nothing bootable, the chip halts)."""

    slot: Partition | None
    image_length: int = 0
    log: list[str] = field(default_factory=list)


def read_table(flash: Flash, table_offset: int) -> PartitionTable:
    return PartitionTable.from_binary(flash.read(table_offset, 0xC00))


def read_otadata(flash: Flash, otadata: Partition) -> list[espidf.OtaEntry]:
    return [
        espidf.decode_entry(flash.read(otadata.offset + i * espidf.SECTOR_SIZE, espidf.ENTRY_SIZE))
        for i in (0, 1)
    ]


def write_otadata(flash: Flash, otadata: Partition, index: int, entry: espidf.OtaEntry) -> None:
    # bootloader_utility.c write_otadata(): erase the sector, write the entry
    addr = otadata.offset + index * espidf.SECTOR_SIZE
    flash.erase(addr, espidf.SECTOR_SIZE)
    flash.write(addr, entry.encode())


def boot(flash: Flash, *, table_offset: int, chip_id: int, chip_rev: int) -> BootResult:
    """Run the bootloader once over `flash`; may raise PowerLoss mid-way."""
    result = BootResult(slot=None)
    log = result.log.append
    try:
        table = read_table(flash, table_offset)
    except PartitionTableError as exc:
        log(f"E boot: Failed to verify partition table: {exc}")
        return result
    slots = table.ota_slots()
    factory = next((p for p in table.partitions if p.is_app and p.subtype == 0x00), None)
    otadata = table.otadata()
    index, initial = _select(flash, otadata, slots, factory, log)
    order = list(range(index, FACTORY_INDEX - 1, -1)) + list(range(index + 1, len(slots)))
    for candidate in order:
        part = factory if candidate == FACTORY_INDEX else slots[candidate]
        if part is None:
            continue
        length = _try_load(flash, part, chip_id, chip_rev, log)
        if length is None:
            log(f"E boot: {'Factory' if candidate < 0 else f'OTA app partition slot {candidate}'} is not bootable")
            continue
        if initial and candidate > FACTORY_INDEX and otadata is not None:
            write_otadata(flash, otadata, 0, _entry(candidate + 1, espidf.STATE_VALID))
            log(f"I boot: Set actual ota_seq={candidate + 1} in otadata[0]")
        log(f"I boot: Loaded app from partition at offset 0x{part.offset:x}")
        result.slot, result.image_length = part, length
        return result
    log("E boot: No bootable app partitions in the partition table")
    return result


def _entry(seq: int, state: int) -> espidf.OtaEntry:
    return espidf.OtaEntry(seq=seq, state=state, crc=espidf.ota_seq_crc(seq))


def _select(flash, otadata, slots, factory, log) -> tuple[int, bool]:
    # bootloader_utility_get_selected_boot_partition()
    if otadata is None:
        return FACTORY_INDEX, False
    entries = read_otadata(flash, otadata)
    for i, entry in enumerate(entries):
        if entry.state == espidf.STATE_PENDING_VERIFY:
            entry.state = espidf.STATE_ABORTED
            write_otadata(flash, otadata, i, entry)
            log(f"I boot: otadata[{i}] was PENDING_VERIFY: marked ABORTED (rollback)")
    if (entries[0].is_invalid() and entries[1].is_invalid()) or not slots:
        if factory is not None:
            log("I boot: Defaulting to factory image")
            return FACTORY_INDEX, False
        log("I boot: No factory image, trying OTA 0")
        return 0, entries[0].blank_or_bad_crc() and entries[1].blank_or_bad_crc()
    active = espidf.active_index(entries)
    if active == -1:
        log("E boot: ota data partition invalid and no factory, will try all partitions")
        return FACTORY_INDEX, False
    index = espidf.slot_of_seq(entries[active].seq, len(slots))
    if entries[active].state == espidf.STATE_NEW:
        entries[active].state = espidf.STATE_PENDING_VERIFY
        write_otadata(flash, otadata, active, entries[active])
        log(f"I boot: otadata[{active}] is NEW: marked PENDING_VERIFY")
    return index, False


def _try_load(flash: Flash, part: Partition, chip_id: int, chip_rev: int, log) -> int | None:
    def readinto(offset: int, buf) -> None:
        buf[:] = flash.read(part.offset + offset, len(buf))

    try:
        return espidf.verify_image(readinto, part.size, chip_id, chip_rev)
    except espidf.ImageInvalid as exc:
        log(f"E esp_image: {exc}")
        return None
