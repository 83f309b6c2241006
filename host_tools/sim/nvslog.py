"""The virtual board's NVS: key-value pairs in its "nvs" partition, kept by the supervisor as ESP-IDF keeps them.

On a chip `esp32.NVS` (ports/esp32/esp32_nvs.c) is a thin wrapper over ESP-IDF's nvs_* calls: the page
cache, the pending writes and the flash work live in C, in ESP-IDF's heap, not in MicroPython's. The
board's `esp32.NVS` (host_tools/sim/board/esp32.py) is as thin: each call is one bus request (OP_NVS) and
this module, in the supervisor, does the rest on the board's `Flash` (every write and erase counted,
timed and cut by power plans like any other). Keeping the log in the interpreter's heap made a 64 KiB
sensor heap fail at random (long-lived values scattered through it).

The layout is this board's, not ESP-IDF's pages: an append-only log of records, each `<BBBBHI` (magic,
type, namespace length, key length, value length, CRC32 of what follows) then namespace, key and value;
a commit record ends each commit and only records followed by a valid commit record count, so a commit
cut by a power loss is not applied. Erased flash (0xFF) ends the log; when a commit does not fit, the
partition is erased and the live values rewritten (one commit). Pending changes belong to the running
process: a reset or a power loss drops them, as it drops ESP-IDF's RAM.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field

REC_MAGIC = 0xA5
T_ERASE, T_I32, T_BLOB, T_COMMIT = 0, 1, 2, 3
HDR = struct.Struct("<BBBBHI")
KEY_MAX = 15  # NVS_KEY_NAME_MAX_SIZE 16 with the NUL (Item::MAX_KEY_LENGTH)
SECTOR = 4096

# esp_err_t values esp32_nvs.c raises (as OSError(-code) through check_esp_err)
ERR_NOT_FOUND = 0x1102
ERR_NOT_ENOUGH_SPACE = 0x1105
ERR_KEY_TOO_LONG = 0x1109
ERR_INVALID_LENGTH = 0x110C
ERR_PART_NOT_FOUND = 0x110F

# OP_NVS requests: a = operation | type << 8; payload = namespace length u8, key length u8, namespace, key,
# then the value (SET) or the reader's buffer length u32 (GET).
OPEN, GET, SET, ERASE_KEY, COMMIT = 1, 2, 3, 4, 5


class NvsError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def record(ns: str, key: str, typ: int, value: bytes) -> bytes:
    n, k = ns.encode(), key.encode()
    head = struct.pack("<BBBBH", REC_MAGIC, typ, len(n), len(k), len(value))
    body = n + k + value
    return head + struct.pack("<I", binascii.crc32(head + body)) + body


def parse_log(data: bytes) -> tuple[dict[tuple[str, str, int], bytes], int]:
    """The committed values ((namespace, key, type) -> value) and where the log ends."""
    state: dict[tuple[str, str, int], bytes] = {}
    batch: list[tuple[str, str, int, bytes]] = []
    pos = end = 0
    while pos + HDR.size <= len(data):
        magic, typ, nlen, klen, vlen, crc = HDR.unpack_from(data, pos)
        body = data[pos + HDR.size : pos + HDR.size + nlen + klen + vlen]
        if magic != REC_MAGIC or len(body) != nlen + klen + vlen or binascii.crc32(data[pos : pos + 6] + body) != crc:
            break
        pos += HDR.size + len(body)
        if typ == T_COMMIT:
            for rec in batch:
                apply(state, *rec)
            batch, end = [], pos
        else:
            batch.append((body[:nlen].decode(), body[nlen : nlen + klen].decode(), typ, bytes(body[nlen + klen :])))
    return state, end


def apply(state: dict, ns: str, key: str, typ: int, value: bytes) -> None:
    for t in (T_I32, T_BLOB):
        if typ == T_ERASE or t == typ:
            state.pop((ns, key, t), None)
    if typ != T_ERASE:
        state[(ns, key, typ)] = value


@dataclass
class Nvs:
    """The nvs partition of one running board process (`flash`: host_tools.sim.flash.Flash)."""

    flash: object
    offset: int | None  # the partition, None when the table has none
    size: int = 0
    committed: dict | None = None
    end: int = 0
    pending: dict[str, list] = field(default_factory=dict)

    def _load(self) -> None:
        if self.offset is None:
            raise NvsError(ERR_PART_NOT_FOUND)  # nvs_flash_init failed at boot on a chip
        if self.committed is None:
            self.committed, self.end = parse_log(self.flash.read(self.offset, self.size))

    def request(self, a: int, payload: bytes) -> bytes | int:
        """One OP_NVS request: the value read (GET) or 0; NvsError for an esp_err_t."""
        op, typ = a & 0xFF, a >> 8
        nlen, klen = payload[0], payload[1]
        ns = payload[2 : 2 + nlen].decode()
        key = payload[2 + nlen : 2 + nlen + klen].decode()
        rest = payload[2 + nlen + klen :]
        self._load()
        if op == OPEN:
            if len(ns) > KEY_MAX:  # the namespace is itself an entry: Page::writeItem refuses the name
                raise NvsError(ERR_KEY_TOO_LONG)
            return 0
        if op == GET:
            value = self._get(ns, key, typ)
            if len(value) > struct.unpack("<I", rest)[0]:
                raise NvsError(ERR_INVALID_LENGTH)
            return value
        if op == SET:
            if len(key) > KEY_MAX:
                raise NvsError(ERR_KEY_TOO_LONG)
            self.pending.setdefault(ns, []).append((ns, key, typ, bytes(rest)))
            return 0
        if op == ERASE_KEY:
            if not any(self._has(ns, key, t) for t in (T_I32, T_BLOB)):
                raise NvsError(ERR_NOT_FOUND)
            self.pending.setdefault(ns, []).append((ns, key, T_ERASE, b""))
            return 0
        if op == COMMIT:
            self._commit(ns)
            return 0
        raise NvsError(0x102)  # ESP_ERR_INVALID_ARG

    def _get(self, ns: str, key: str, typ: int) -> bytes:
        for _ns, k, t, value in reversed(self.pending.get(ns, ())):
            if k == key and t in (typ, T_ERASE):
                if t == T_ERASE:
                    raise NvsError(ERR_NOT_FOUND)
                return value
        assert self.committed is not None
        value = self.committed.get((ns, key, typ))
        if value is None:
            raise NvsError(ERR_NOT_FOUND)
        return value

    def _has(self, ns: str, key: str, typ: int) -> bool:
        try:
            self._get(ns, key, typ)
            return True
        except NvsError:
            return False

    def _commit(self, ns: str) -> None:
        changes = self.pending.pop(ns, None)
        if not changes:
            return
        assert self.committed is not None and self.offset is not None
        log = b"".join(record(*c) for c in changes) + record("", "", T_COMMIT, b"")
        state = dict(self.committed)
        for c in changes:
            apply(state, *c)
        if self.end + len(log) > self.size:
            log = b"".join(record(n, k, t, v) for (n, k, t), v in state.items()) + record("", "", T_COMMIT, b"")
            if len(log) > self.size:
                self.pending[ns] = changes
                raise NvsError(ERR_NOT_ENOUGH_SPACE)
            self.flash.erase(self.offset, self.size)
            self.end = 0
        self.flash.write(self.offset + self.end, log)
        self.end += len(log)
        self.committed = state
