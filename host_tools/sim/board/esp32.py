"""esp32 for the virtual board: Partition with the API and errors of MicroPython v1.28.

Mirrors `ports/esp32/esp32_partition.c` over ESP-IDF's `esp_partition_*` and
`esp_ota_*` calls (v5.5.1); the flash is reached through the board's bus.
Errors are raised as `OSError(-esp_err_t)`, exactly as `check_esp_err()` does.
"""

import gc
import hashlib
import struct

import _identity
import _simbus
import espidf

try:
    _md5 = hashlib.md5
except AttributeError:  # a Unix port built without a TLS library (scripts/build_micropython_unix.sh)
    from _md5 import md5 as _md5

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_NATIVE_BLOCK = const(4096)
_ENOENT = const(2)
_EINVAL = const(22)
# esp_err.h / esp_ota_ops.h
_ESP_FAIL = const(-1)
_ESP_ERR_INVALID_ARG = const(0x102)
_ESP_ERR_INVALID_SIZE = const(0x104)
_ESP_ERR_NOT_FOUND = const(0x105)
_ESP_ERR_OTA_VALIDATE_FAILED = const(0x1503)
# nvs.h: raised by the supervisor (host_tools/sim/nvslog.py), named in _ERR_NAMES
_SUBTYPE_ANY = const(0xFF)
_SUBTYPE_FACTORY = const(0x00)
_SUBTYPE_OTA_MIN = const(0x10)
_SUBTYPE_OTA_MAX = const(0x20)
_SUBTYPE_DATA_OTA = const(0x00)
_TABLE_MAX = const(0xC00)

_table = None


# esp_err_to_name() for the codes this module returns
_ERR_NAMES = {
    -1: "ESP_FAIL",
    0x101: "ESP_ERR_NO_MEM",
    0x102: "ESP_ERR_INVALID_ARG",
    0x104: "ESP_ERR_INVALID_SIZE",
    0x105: "ESP_ERR_NOT_FOUND",
    0x1102: "ESP_ERR_NVS_NOT_FOUND",
    0x1105: "ESP_ERR_NVS_NOT_ENOUGH_SPACE",
    0x1109: "ESP_ERR_NVS_KEY_TOO_LONG",
    0x110C: "ESP_ERR_NVS_INVALID_LENGTH",
    0x1503: "ESP_ERR_OTA_VALIDATE_FAILED",
}
# ESP_ERR_NO_MEM, ESP_ERR_TIMEOUT, ESP_ERR_NOT_SUPPORTED map to POSIX codes
_ERR_POSIX = {0x101: 12, 0x107: 110, 0x106: 95}


def _check(err):
    # mphalport.c check_esp_err_(): ESP_OK passes, anything else is OSError(pcode, esp_err_to_name(err)).
    # With the heap locked the name's str object cannot be made: OSError(pcode), whose args only fit
    # when micropython.alloc_emergency_exception_buf() gave an emergency buffer, else OSError().
    if not err:
        return
    pcode = _ERR_POSIX.get(err, -err)
    try:
        bytearray(1)
    except MemoryError:
        if _identity.emergency_buf:
            raise OSError(pcode)
        raise OSError()
    raise OSError(pcode, _ERR_NAMES.get(err, "UNKNOWN ERROR"))


class _Part:
    # esp_partition_t
    def __init__(self, ptype, subtype, address, size, label, flags):
        self.type = ptype
        self.subtype = subtype
        self.address = address
        self.size = size
        self.label = label
        self.encrypted = bool(flags & 1)


def _partitions():
    # esp_partition_find() over the binary table at CONFIG_PARTITION_TABLE_OFFSET
    global _table
    if _table is None:
        raw = _simbus.bus().call(_simbus.OP_READ, _simbus.env_int("FOTA_SIM_TABLE_OFFSET", 0x8000), _TABLE_MAX)
        parts = []
        for pos in range(0, _TABLE_MAX, 32):
            entry = raw[pos : pos + 32]
            if entry[:2] == b"\xeb\xeb":
                if _md5(raw[:pos]).digest() != bytes(entry[16:32]):
                    raise OSError(-_ESP_ERR_INVALID_ARG)
                break
            if entry[:2] != b"\xaa\x50":
                break
            _m, ptype, sub, addr, size, label, flags = struct.unpack("<2sBBLL16sL", entry)
            parts.append(_Part(ptype, sub, addr, size, str(label.rstrip(b"\x00"), "utf-8"), flags))
        _table = parts
    return _table


def _find(ptype, subtype=_SUBTYPE_ANY, label=None):
    return [
        p
        for p in _partitions()
        if p.type == ptype and (subtype == _SUBTYPE_ANY or p.subtype == subtype) and (label is None or p.label == label)
    ]


def _first(ptype, subtype=_SUBTYPE_ANY, label=None):
    found = _find(ptype, subtype, label)
    return found[0] if found else None


def _ota_parts():
    parts = [p for p in _find(0) if _SUBTYPE_OTA_MIN <= p.subtype < _SUBTYPE_OTA_MAX]
    return sorted(parts, key=lambda p: p.subtype)


def _read(part, offset, buf):
    # esp_partition_read()
    if offset > part.size:
        _check(_ESP_ERR_INVALID_ARG)
    if len(buf) > part.size - offset:
        _check(_ESP_ERR_INVALID_SIZE)
    if len(buf):
        _simbus.bus().call(_simbus.OP_READ, part.address + offset, len(buf), into=buf)


def _write(part, offset, buf):
    # esp_partition_write(): no erase, bits can only be cleared
    if offset > part.size:
        _check(_ESP_ERR_INVALID_ARG)
    if len(buf) > part.size - offset:
        _check(_ESP_ERR_INVALID_SIZE)
    if len(buf):
        _simbus.bus().call(_simbus.OP_WRITE, part.address + offset, len(buf), payload=buf)


def _erase(part, offset, size):
    # esp_partition_erase_range()
    if offset > part.size:
        _check(_ESP_ERR_INVALID_ARG)
    if size > part.size - offset or size % _NATIVE_BLOCK:
        _check(_ESP_ERR_INVALID_SIZE)
    if offset % _NATIVE_BLOCK:
        _check(_ESP_ERR_INVALID_ARG)
    if size:
        _simbus.bus().call(_simbus.OP_ERASE, part.address + offset, size)


def _otadata():
    part = _first(1, _SUBTYPE_DATA_OTA)
    if part is None:
        return None, None
    entries = []
    for i in (0, 1):
        raw = bytearray(espidf.ENTRY_SIZE)
        _read(part, i * espidf.SECTOR_SIZE, raw)
        entries.append(espidf.decode_entry(raw))
    return part, entries


def _rewrite_ota_seq(part, entries, seq, index):
    # esp_ota_ops.c rewrite_ota_seq(): erase that sector, write the 32-byte entry
    entries[index].seq = seq
    entries[index].crc = espidf.ota_seq_crc(seq)
    _erase(part, index * espidf.SECTOR_SIZE, espidf.SECTOR_SIZE)
    _write(part, index * espidf.SECTOR_SIZE, entries[index].encode())


def _running():
    # esp_ota_get_running_partition(): the slot the bootloader loaded
    address = _simbus.env_int("FOTA_SIM_RUNNING", -1)
    for p in _find(0):
        if p.address == address:
            return p
    return None


def _boot_partition():
    # esp_ota_get_boot_partition()
    part, entries = _otadata()
    if part is None:
        return None
    slots = _ota_parts()
    if not slots or (entries[0].is_invalid() and entries[1].is_invalid()):
        return _first(0, _SUBTYPE_FACTORY)
    active = espidf.active_index(entries)
    if active == -1:
        return _first(0, _SUBTYPE_FACTORY)
    return _first(0, _SUBTYPE_OTA_MIN + espidf.slot_of_seq(entries[active].seq, len(slots)))


def _next_update(start):
    # esp_ota_get_next_update_partition()
    default, next_is_result = None, start.type == 0 and start.subtype == _SUBTYPE_FACTORY
    for p in _ota_parts():
        if default is None:
            default = p
        if next_is_result:
            return p
        if p.address == start.address:
            next_is_result = True
    return default


def _set_boot(part):
    # esp_ota_set_boot_partition(): verify the image (esp_image_verify, done by the
    # supervisor like C code that uses no MicroPython heap), then point otadata at it
    try:
        _simbus.bus().call(_simbus.OP_VERIFY, part.address, part.size)
    except OSError:
        _check(_ESP_ERR_OTA_VALIDATE_FAILED)
    otadata, entries = _otadata()
    if otadata is None:
        _check(_ESP_ERR_NOT_FOUND)
    if part.subtype == _SUBTYPE_FACTORY:
        _erase(otadata, 0, otadata.size)
        return
    slots = _ota_parts()
    slot = part.subtype - _SUBTYPE_OTA_MIN
    if part.type != 0 or slot < 0 or slot >= len(slots):
        _check(_ESP_ERR_INVALID_ARG)
    active = espidf.active_index(entries)
    if active == -1:
        entries[0].state = espidf.STATE_NEW
        _rewrite_ota_seq(otadata, entries, slot + 1, 0)
        return
    nxt = 1 - active
    entries[nxt].state = espidf.STATE_NEW
    _rewrite_ota_seq(otadata, entries, espidf.seq_for_slot(entries[active].seq, slot, len(slots)), nxt)


class Partition:
    """esp32.Partition(id, block_size=4096, /): id is BOOT, RUNNING or a label."""

    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, *args, **kwargs):
        if kwargs:
            raise TypeError("function doesn't take keyword arguments")
        if not 1 <= len(args) <= 2:
            raise TypeError("function takes 2 positional arguments but %d were given" % len(args))
        ident = args[0]
        if isinstance(ident, _Part):  # internal: find() and get_next_update()
            part = ident
        elif isinstance(ident, int):
            if ident == Partition.BOOT:
                part = _boot_partition()
            elif ident == Partition.RUNNING:
                part = _running()
            else:
                raise ValueError
        else:
            part = _first(0, _SUBTYPE_ANY, ident) or _first(1, _SUBTYPE_ANY, ident)
        self._init(part, args[1] if len(args) == 2 else _NATIVE_BLOCK)

    def _init(self, part, block_size):
        if part is None:
            raise OSError(_ENOENT)
        self._part = part
        self._block_size = block_size

    @staticmethod
    def find(type=0, subtype=_SUBTYPE_ANY, label=None, block_size=_NATIVE_BLOCK):
        return [Partition(p, block_size) for p in _find(type, subtype, label)]

    def info(self):
        p = self._part
        return (p.type, p.subtype, p.address, p.size, p.label, p.encrypted)

    def readblocks(self, block_num, buf, offset=0):
        _read(self._part, block_num * self._block_size + offset, buf)

    def writeblocks(self, block_num, buf, *offset):
        addr = block_num * self._block_size
        if offset:
            _write(self._part, addr + offset[0], buf)
            return
        if self._block_size < _NATIVE_BLOCK:
            self._write_cached(addr, buf)
            return
        _erase(self._part, addr, len(buf))
        _write(self._part, addr, buf)

    def _write_cached(self, addr, buf):
        # block_size < 4096: read-modify-erase-write each 4 KiB sector touched
        src = memoryview(buf)
        while len(src):
            sector = addr - addr % _NATIVE_BLOCK
            cache = bytearray(_NATIVE_BLOCK)
            _read(self._part, sector, cache)
            at = addr - sector
            n = min(len(src), _NATIVE_BLOCK - at)
            cache[at : at + n] = src[:n]
            _erase(self._part, sector, _NATIVE_BLOCK)
            _write(self._part, sector, cache)
            src = src[n:]
            addr += n

    def ioctl(self, op, arg):
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return self._part.size // self._block_size
        if op == 5:
            return self._block_size
        if op == 6:
            if self._block_size != _NATIVE_BLOCK:
                return -_EINVAL
            _erase(self._part, arg * _NATIVE_BLOCK, _NATIVE_BLOCK)
            return 0
        return None

    def set_boot(self):
        _set_boot(self._part)

    def get_next_update(self):
        part = _next_update(self._part)
        if part is None:
            raise OSError(_ENOENT)
        return Partition(part)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        # esp_ota_mark_app_valid_cancel_rollback() -> esp_ota_current_ota_is_workable(true)
        otadata, entries = _otadata()
        if otadata is None:
            _check(_ESP_ERR_NOT_FOUND)
        active = espidf.active_index(entries)
        if active == -1 or not _ota_parts():
            _check(_ESP_FAIL)
        if entries[active].state != espidf.STATE_VALID:
            entries[active].state = espidf.STATE_VALID
            _rewrite_ota_seq(otadata, entries, entries[active].seq, active)

    def __repr__(self):
        p = self._part
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=%u>" % (
            p.type,
            p.subtype,
            p.address,
            p.size,
            p.label,
            p.encrypted,
        )


# idf_heap_info(): heap_caps.h capabilities
HEAP_EXEC = const(1)  # MALLOC_CAP_EXEC
HEAP_DATA = const(4)  # MALLOC_CAP_8BIT
_CAP_32BIT = const(2)
# An ESP32's heap regions after start-up (size, capabilities): DRAM, D/IRAM (data and code), IRAM. The
# sizes are an ESP32_GENERIC build's; what the board knows is MicroPython's own heap, which the port takes
# from the largest region at boot: that region's use is the GC heap (gc.mem_free() + gc.mem_alloc()).
_REGIONS = (
    (7288, HEAP_DATA | _CAP_32BIT),
    (16648, HEAP_DATA | _CAP_32BIT),
    (94904, HEAP_DATA | _CAP_32BIT),
    (180224, HEAP_DATA | _CAP_32BIT | HEAP_EXEC),
    (15072, HEAP_DATA | _CAP_32BIT | HEAP_EXEC),
    (113200, HEAP_DATA | _CAP_32BIT | HEAP_EXEC),
    (65536, _CAP_32BIT | HEAP_EXEC),
)
_min_free = {}


def idf_heap_info(capabilities):
    """[(size, free, largest free block, minimum free), ...] of the regions with all of `capabilities`."""
    cap = int(capabilities)
    gc_heap = gc.mem_free() + gc.mem_alloc()
    biggest = max(r[0] for r in _REGIONS)
    out = []
    for i, (size, caps) in enumerate(_REGIONS):
        if caps & cap != cap:
            continue
        free = size - min(size, gc_heap) if size == biggest else size
        low = min(_min_free.get(i, free), free)
        _min_free[i] = low
        out.append((size, free, free, low))
    return out


# NVS: esp32_nvs.c over ESP-IDF's nvs_* calls, which run in C on a chip (their page cache and pending writes are in
# ESP-IDF's heap, not MicroPython's): each call is one bus request the supervisor answers on the board's flash
# (host_tools/sim/nvslog.py: the log's layout, commits, power cuts). Here only the argument checks and the copy.
_NVS_OPEN = const(1)  # nvslog.OPEN, GET, SET, ERASE_KEY, COMMIT
_NVS_GET = const(2)
_NVS_SET = const(3)
_NVS_ERASE_KEY = const(4)
_NVS_COMMIT = const(5)
_T_I32 = const(1)  # nvslog.T_I32, T_BLOB
_T_BLOB = const(2)
_nvs_req = bytearray(36)  # namespace and key (15 bytes each at most) behind their two lengths, made once


def _nvs(op, typ, ns, key, value=b"", into=None):
    n, k = ns.encode(), key.encode()
    head = len(n) + len(k) + 2
    if head > len(_nvs_req) or len(n) > 255 or len(k) > 255:  # longer than NVS takes: the supervisor says so
        payload = bytes((min(len(n), 255), min(len(k), 255))) + n[:255] + k[:255] + value
    else:
        _nvs_req[0], _nvs_req[1] = len(n), len(k)
        _nvs_req[2 : 2 + len(n)] = n
        _nvs_req[2 + len(n) : head] = k
        payload = memoryview(_nvs_req)[:head]
        if value:
            payload = bytes(payload) + value
    try:
        return _simbus.bus().call(_simbus.OP_NVS, op | typ << 8, len(payload), payload=payload, into=into)
    except OSError as e:
        _check(-e.args[0])


def _str(obj):
    # mp_obj_str_get_str()
    if isinstance(obj, str):
        return obj
    if isinstance(obj, bytes):
        return str(obj, "utf-8")
    raise TypeError("can't convert '%s' object to str implicitly" % type(obj).__name__)


class NVS:
    """esp32.NVS(namespace): esp32_nvs.c over nvs_open/nvs_set_*/nvs_get_*/nvs_erase_key/nvs_commit."""

    def __init__(self, *args, **kwargs):
        if kwargs:
            raise TypeError("function doesn't take keyword arguments")
        if len(args) != 1:
            raise TypeError("function takes 1 positional arguments but %d were given" % len(args))
        self._ns = _str(args[0])
        _nvs(_NVS_OPEN, 0, self._ns, "")

    def set_i32(self, key, value):
        key = _str(key)
        if not isinstance(value, int):
            raise TypeError("can't convert %s to int" % type(value).__name__)
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise OverflowError("overflow converting long int to machine word")
        _nvs(_NVS_SET, _T_I32, self._ns, key, struct.pack("<i", value))

    def get_i32(self, key):
        return struct.unpack("<i", _nvs(_NVS_GET, _T_I32, self._ns, _str(key), struct.pack("<I", 4)))[0]

    def set_blob(self, key, value):
        key = _str(key)
        if isinstance(value, str):
            value = value.encode()
        _nvs(_NVS_SET, _T_BLOB, self._ns, key, bytes(memoryview(value)))

    def get_blob(self, key, buf):
        key = _str(key)
        if isinstance(buf, (bytes, str)):
            raise TypeError("object with buffer protocol required")
        out = memoryview(buf)
        return _nvs(_NVS_GET, _T_BLOB, self._ns, key, struct.pack("<I", len(out)), into=out)

    def erase_key(self, key):
        _nvs(_NVS_ERASE_KEY, 0, self._ns, _str(key))

    def commit(self):
        _nvs(_NVS_COMMIT, 0, self._ns, "")

    def __repr__(self):
        return "<NVS namespace>"
