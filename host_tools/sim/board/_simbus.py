"""The board's wire to its supervisor: flash, reset, watchdog and link requests.

Frame: request `<BII` (op, a, b) plus `b` payload bytes for a write; reply
`<iI` (status, length) plus `length` bytes. The supervisor answers a reset or a
power cut by ending this process, so those requests never return.
"""

import os
import struct

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


OP_READ = const(1)
OP_WRITE = const(2)
OP_ERASE = const(3)
OP_RESET = const(4)
OP_WDT_ARM = const(5)
OP_WDT_FEED = const(6)
OP_LINK = const(7)
OP_IDLE = const(8)
OP_VERIFY = const(9)  # esp_image_verify() runs in C on a chip: here in the supervisor, off the heap
OP_RTC_SET = const(10)  # settimeofday(): (device seconds, microseconds); see _simclock
OP_READY = const(11)  # _boot is done: Ctrl-C may reach the interpreter from now on
OP_NVS = const(12)  # esp32.NVS's nvs_* calls: ESP-IDF's C on a chip, the supervisor here (host_tools/sim/nvslog.py)

_bus = None


class _Bus:
    # A chip's flash driver allocates nothing: neither does a request here that reads into a buffer
    # (LittleFS reads blocks through this on every file lookup, e.g. each `import json` searching "" and /lib).
    def __init__(self, fd):
        self._f = open(fd, "r+b")
        self._req = bytearray(9)
        self._rsp = bytearray(8)

    def call(self, op, a=0, b=0, payload=None, into=None):
        struct.pack_into("<BII", self._req, 0, op, a, b)
        self._f.write(self._req)
        if payload is not None:
            self._f.write(payload)
        self._read_exact(self._rsp, 8)
        r = self._rsp
        length = r[4] | r[5] << 8 | r[6] << 16 | r[7] << 24
        if r[3] & 0x80:  # negative: an esp_err_t; no value here reaches 2^30 (31-bit small ints)
            status = -(((r[0] ^ 0xFF) | (r[1] ^ 0xFF) << 8 | (r[2] ^ 0xFF) << 16 | (r[3] ^ 0xFF) << 24) + 1)
            raise OSError(status)
        status = r[0] | r[1] << 8 | r[2] << 16 | r[3] << 24
        if into is not None:
            self._read_exact(into, length)
            return status
        if length:
            data = bytearray(length)
            self._read_exact(data, length)
            return data
        return status

    def _read_exact(self, buf, length):
        got = self._f.readinto(buf) if length == len(buf) else 0  # the usual case: one read, no memoryview
        if got == length:
            return
        mv = memoryview(buf)
        while got < length:
            n = self._f.readinto(mv[got:length])
            if not n:
                raise OSError(5)  # EIO: supervisor gone
            got += n


def bus():
    global _bus
    if _bus is None:
        _bus = _Bus(int(os.getenv("FOTA_SIM_BUS")))
    return _bus


def env_int(name, default=0):
    value = os.getenv(name)
    return int(value) if value else default


def env_text(name, default=""):
    value = os.getenv(name)
    return value if value else default
