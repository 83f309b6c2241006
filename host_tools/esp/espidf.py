"""ESP-IDF's OTA data and app-image rules, as plain Python for both interpreters.

The host's app-image checks (host_tools/esp/app_image.py, `fota build`), the virtual
board's `esp32` module (MicroPython: the supervisor copies this file onto the board's
MICROPYPATH) and its bootloader (CPython) all use this file, so the app side (`esp_ota_ops.c`) and the bootloader side
(`bootloader_utility.c`, `bootloader_common.c`, `esp_image_format.c`) apply the
same rules to the same bytes. Sources: ESP-IDF v5.5.1, see
shared/reference/esp32-ota.md.

    entries = [decode_entry(sector0[:32]), decode_entry(sector1[:32])]
    active = active_index(entries)          # -1: none valid
    length = verify_image(readinto, part_size, chip_id=0, chip_rev=300)
"""

import binascii
import hashlib
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# esp_ota_select_entry_t (esp_flash_partitions.h): 32 bytes, little-endian.
ENTRY_SIZE = const(32)
SECTOR_SIZE = const(4096)
SEQ_BLANK = const(0xFFFFFFFF)
# esp_ota_img_states_t
STATE_NEW = const(0)
STATE_PENDING_VERIFY = const(1)
STATE_VALID = const(2)
STATE_INVALID = const(3)
STATE_ABORTED = const(4)
STATE_UNDEFINED = const(0xFFFFFFFF)

STATE_NAMES = {
    STATE_NEW: "NEW",
    STATE_PENDING_VERIFY: "PENDING_VERIFY",
    STATE_VALID: "VALID",
    STATE_INVALID: "INVALID",
    STATE_ABORTED: "ABORTED",
    STATE_UNDEFINED: "UNDEFINED",
}

# esp_image_format.h
IMAGE_MAGIC = const(0xE9)
HEADER_SIZE = const(24)
SEGMENT_HEADER_SIZE = const(8)
MAX_SEGMENTS = const(16)
CHECKSUM_SEED = const(0xEF)
HASH_SIZE = const(32)
APP_DESC_MAGIC = const(0xABCD5432)
APP_DESC_OFFSET = const(0x20)

# ESP32 memory regions a segment may load into (soc/soc.h, esp32).
_ESP32_REGIONS = (
    (0x3F400000, 0x3F800000),  # DROM (flash-mapped rodata)
    (0x400C2000, 0x40C00000),  # IROM (flash-mapped code)
    (0x3FFAE000, 0x40000000),  # DRAM
    (0x40070000, 0x400A0000),  # IRAM
    (0x400C0000, 0x400C2000),  # RTC fast (IRAM alias)
    (0x3FF80000, 0x3FF82000),  # RTC fast (DRAM alias)
    (0x50000000, 0x50002000),  # RTC slow
)


class ImageInvalid(Exception):
    """esp_image_verify() failed; args[0] says why (as the ESP-IDF log would)."""


class OtaEntry:
    """One otadata sector's leading esp_ota_select_entry_t."""

    def __init__(self, seq=SEQ_BLANK, label=b"\xff" * 20, state=STATE_UNDEFINED, crc=0xFFFFFFFF):
        self.seq = seq
        self.label = label
        self.state = state
        self.crc = crc

    def encode(self):
        return struct.pack("<I20sII", self.seq, self.label, self.state, self.crc)

    def is_invalid(self):
        # bootloader_common_ota_select_invalid(): blank, INVALID or ABORTED
        return self.seq == SEQ_BLANK or self.state in (STATE_INVALID, STATE_ABORTED)

    def is_valid(self):
        # bootloader_common_ota_select_valid(): not invalid and CRC matches
        return not self.is_invalid() and self.crc == ota_seq_crc(self.seq)

    def blank_or_bad_crc(self):
        return self.seq == SEQ_BLANK or self.crc != ota_seq_crc(self.seq)

    def state_name(self):
        return STATE_NAMES.get(self.state, "0x%08x" % self.state)


def decode_entry(data):
    seq, label, state, crc = struct.unpack("<I20sII", bytes(data[:ENTRY_SIZE]))
    return OtaEntry(seq, label, state, crc)


def ota_seq_crc(seq):
    # bootloader_common_ota_select_crc(): CRC32 (seed 0xFFFFFFFF) of ota_seq only
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def active_index(entries):
    # bootloader_common_get_active_otadata(): larger seq of the valid ones, tie -> 0
    ok0 = entries[0].is_valid()
    ok1 = entries[1].is_valid()
    if ok0 and ok1:
        return 0 if entries[0].seq >= entries[1].seq else 1
    if ok0:
        return 0
    if ok1:
        return 1
    return -1


def seq_for_slot(active_seq, slot, slot_count):
    # esp_rewrite_ota_data(): smallest value >= active seq that maps to `slot`
    base = (slot + 1) % slot_count
    i = 0
    while active_seq > base + i * slot_count:
        i += 1
    return base + i * slot_count


def slot_of_seq(seq, slot_count):
    return (seq - 1) % slot_count


def _check_header(hdr, chip_id, chip_rev):
    if hdr[0] != IMAGE_MAGIC:
        raise ImageInvalid("image has invalid magic byte (0x%02x)" % hdr[0])
    if hdr[1] > MAX_SEGMENTS:
        raise ImageInvalid("image has too many segments (%d)" % hdr[1])
    image_chip, _min_rev, min_full, max_full = struct.unpack("<HBHH", bytes(hdr[12:19]))
    if image_chip != chip_id:
        raise ImageInvalid("mismatch chip ID, expected %d, found %d" % (chip_id, image_chip))
    if chip_rev < min_full:
        raise ImageInvalid("chip revision v%d.%d needs v%d.%d" % (chip_rev // 100, chip_rev % 100, min_full // 100, min_full % 100))
    if max_full not in (0, 0xFFFF) and chip_rev > max_full:
        raise ImageInvalid("chip revision above the image's maximum v%d.%d" % (max_full // 100, max_full % 100))
    return hdr[1], hdr[23] == 1


def _check_segment(index, load_addr, data_len, end, part_size, chip_id):
    if data_len % 4:
        raise ImageInvalid("unaligned segment length 0x%x" % data_len)
    if end > part_size:
        raise ImageInvalid("segment %d ends beyond the partition" % index)
    if chip_id == 0:
        for lo, hi in _ESP32_REGIONS:
            if lo <= load_addr and load_addr + data_len <= hi:
                return
        raise ImageInvalid("segment %d: bad load address range 0x%08x len 0x%x" % (index, load_addr, data_len))


def verify_image(readinto, part_size, chip_id=0, chip_rev=300, buf=None):
    """Check an app image the way esp_image_verify(ESP_IMAGE_VERIFY) does.

    readinto(offset, buffer) fills `buffer` from the partition. Returns the
    image length (header to appended hash inclusive). Raises ImageInvalid.
    """
    if buf is None:
        buf = bytearray(4096)
    mv = memoryview(buf)
    hdr = bytearray(HEADER_SIZE)
    readinto(0, hdr)
    nseg, hash_appended = _check_header(hdr, chip_id, chip_rev)
    sha = hashlib.sha256()
    sha.update(hdr)
    acc = 0
    pos = HEADER_SIZE
    seg_hdr = bytearray(SEGMENT_HEADER_SIZE)
    for index in range(nseg):
        if pos + SEGMENT_HEADER_SIZE > part_size:
            raise ImageInvalid("segment %d header beyond the partition" % index)
        readinto(pos, seg_hdr)
        sha.update(seg_hdr)
        load_addr, data_len = struct.unpack("<II", bytes(seg_hdr))
        pos += SEGMENT_HEADER_SIZE
        _check_segment(index, load_addr, data_len, pos + data_len, part_size, chip_id)
        acc ^= _hash_range(readinto, mv, sha, pos, data_len)
        pos += data_len
    pad_end = (pos + 16) & ~15  # the checksum byte ends a 16-byte block
    if pad_end + (HASH_SIZE if hash_appended else 0) > part_size:
        raise ImageInvalid("image length exceeds the partition")
    checksum = CHECKSUM_SEED ^ _fold_xor(acc, len(mv))
    tail = bytearray(pad_end - pos)
    readinto(pos, tail)
    if tail[-1] != checksum:
        raise ImageInvalid("checksum failed. Calculated 0x%02x read 0x%02x" % (checksum, tail[-1]))
    sha.update(tail)
    if not hash_appended:
        return pad_end
    want = bytearray(HASH_SIZE)
    readinto(pad_end, want)
    if sha.digest() != bytes(want):
        raise ImageInvalid("image hash failed - image is corrupt")
    return pad_end + HASH_SIZE


def _hash_range(readinto, mv, sha, pos, length):
    # Hash `length` bytes at `pos` through one buffer; return the chunks XORed as
    # integers (byte positions do not matter to the byte-wise XOR checksum).
    acc = 0
    size = len(mv)
    while length:
        n = size if length > size else length
        chunk = mv[:n]
        readinto(pos, chunk)
        sha.update(chunk)
        acc ^= int.from_bytes(chunk, "little")
        pos += n
        length -= n
    return acc


def _fold_xor(acc, nbytes):
    # XOR of the bytes of a non-negative integer below 2 ** (8 * nbytes).
    out = 0
    for b in acc.to_bytes(nbytes, "little"):
        out ^= b
    return out
