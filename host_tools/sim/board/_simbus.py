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

_bus = None


class _Bus:
    def __init__(self, fd):
        self._f = open(fd, "r+b")
        self._req = bytearray(9)
        self._rsp = bytearray(8)

    def call(self, op, a=0, b=0, payload=None, into=None):
        struct.pack_into("<BII", self._req, 0, op, a, b)
        self._f.write(self._req)
        if payload is not None:
            self._f.write(payload)
        self._read_exact(memoryview(self._rsp))
        status, length = struct.unpack("<iI", self._rsp)
        if status < 0:
            raise OSError(status)
        if into is not None:
            self._read_exact(memoryview(into)[:length])
            return status
        if length:
            data = bytearray(length)
            self._read_exact(memoryview(data))
            return data
        return status

    def _read_exact(self, mv):
        got = 0
        while got < len(mv):
            n = self._f.readinto(mv[got:])
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
