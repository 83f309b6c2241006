"""What the agent needs to know about ESP-IDF's otadata, read through esp32.Partition.

MicroPython exposes no `esp_ota_get_state_partition()`, so the agent reads the
two 32-byte `esp_ota_select_entry_t` records itself (shared/reference/esp32-ota.md):

    from fota.boot import otadata
    entries = otadata.read(part)          # part = Partition.find(TYPE_DATA, 0)[0]
    state = otadata.slot_state(entries, slot_index, slot_count)   # e.g. PENDING_VERIFY
    otadata.erase_stale(part, entries, target_index, slot_count)  # what esp_ota_begin does (IDF 5.5)
"""

import binascii
import struct

from ..compat import const


# esp_ota_img_states_t (esp_flash_partitions.h)
NEW = const(0)
PENDING_VERIFY = const(1)
VALID = const(2)
INVALID = const(3)
ABORTED = const(4)
UNDEFINED = const(-1)  # 0xFFFFFFFF read as a blank state
_SEQ_BLANK = const(0xFFFFFFFF)
_ENTRY = const(32)


class Entry:
    def __init__(self, seq, state, crc):
        self.seq = seq
        self.state = state
        self.crc = crc

    # The entry was written whole: not blank and its CRC (of seq only) matches.
    def intact(self):
        return self.seq != _SEQ_BLANK and self.crc == binascii.crc32(struct.pack("<I", self.seq), 0xFFFFFFFF) & 0xFFFFFFFF

    # bootloader_common_ota_select_valid(): intact and not INVALID/ABORTED
    def valid(self):
        return self.intact() and self.state not in (INVALID, ABORTED)


# Both entries of the otadata partition `part` (a Partition, block size 4096).
def read(part):
    entries = []
    buf = bytearray(_ENTRY)
    for i in (0, 1):
        part.readblocks(i, buf)
        seq, state, crc = struct.unpack("<I20xII", buf)
        entries.append(Entry(seq, UNDEFINED if state == 0xFFFFFFFF else state, crc))
    return entries


# Index of the entry the bootloader follows: the valid one with the larger seq (tie: 0), or -1.
def active(entries):
    a, b = entries[0].valid(), entries[1].valid()
    if a and b:
        return 0 if entries[0].seq >= entries[1].seq else 1
    if a:
        return 0
    return 1 if b else -1


# The state of the active entry if it selects `slot`; else the state of an intact
# entry that maps to `slot` (the newest), or UNDEFINED when none does.
def slot_state(entries, slot, slot_count):
    idx = active(entries)
    if idx >= 0 and (entries[idx].seq - 1) % slot_count == slot:
        return entries[idx].state
    best = None
    for e in entries:
        if e.intact() and (e.seq - 1) % slot_count == slot:
            if best is None or e.seq > best.seq:
                best = e
    return UNDEFINED if best is None else best.state


# The slot index the next boot selects from otadata, or -1 when nothing is valid.
def boot_slot(entries, slot_count):
    idx = active(entries)
    return -1 if idx < 0 else (entries[idx].seq - 1) % slot_count


# esp_ota_begin() in ESP-IDF >= 5.5: before overwriting `target`, erase the inactive
# otadata sector if its entry points at that slot, so a stale entry can never select
# a half-written image. Returns True when it erased.
def erase_stale(part, entries, target, slot_count):
    idx = active(entries)
    for i in (0, 1):
        e = entries[i]
        if i != idx and e.seq != _SEQ_BLANK and (e.seq - 1) % slot_count == target:
            part.ioctl(6, i)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE of 4 KiB block i
            return True
    return False
