"""The device's wall clock in the protocol's terms: Unix time, whatever the port's epoch.

MicroPython's ESP32 port counts time from 2000-01-01 (MICROPY_EPOCH_IS_2000, the default in
py/mpconfig.h); the Unix port and CPython count from 1970-01-01 (ports/unix/mpconfigport.h).
`time.time()`, `gmtime`, `localtime`, `mktime` and `machine.RTC().datetime()` all use the port's
epoch. Manifests (`expires`), reports and the server use Unix time. Every conversion between the
two happens here, detected the way micropython-lib's ntptime does it: `time.gmtime(0)[0]`.

    from fota import clock
    clock.unix_now()       # Unix seconds (int), or None while the clock is not set (no NTP yet)
    clock.is_set()         # the same test, as a bool
    clock.to_unix(t)       # device seconds (time.time(), time.mktime(...)) -> Unix seconds
    clock.from_unix(u)     # Unix seconds (manifest, server) -> device seconds, for gmtime/localtime
    clock.localtime(u)     # time.localtime() of a Unix time (the ESP32 port has no time zone: UTC)
    clock.epoch_offset()   # 946684800 on an epoch-2000 port, 0 on an epoch-1970 one
    clock.rtc_ms()         # the RTC in ms (device epoch), set or not: durations across a reset

"Not set" works under both epochs: a chip's RTC starts at its epoch at power-on and counts from
there, so a device time before 2024-01-01 (in Unix terms) means nobody set it. Only the time of
day is read here; durations use `ticks_ms` (compat), which a clock step cannot disturb. A duration
across a reset cannot: ticks start again at 0 on every boot. The RTC keeps counting through soft,
hard and watchdog resets and deep sleep (ESP-IDF "System Time"; only a power-up resets it), set or
not, so `rtc_ms()` spans one; a clock set in between (NTP) steps it by an unknown amount.
"""

import time

from .compat import const

_UNIX_AT_2000 = const(946684800)  # 2000-01-01T00:00:00Z in Unix seconds (10957 days)
_SET_AFTER = const(1704067200)  # 2024-01-01T00:00:00Z: earlier device times mean "never set"
# (micropython-lib ntptime makes the same 2024 assumption for its NTP era fix)

_offset = None  # Unix seconds at the device's epoch; decided on first use, never at import


# Seconds from 1970-01-01 to the device's epoch, from the epoch year the port reports.
def epoch_offset():
    global _offset
    if _offset is None:
        year = time.gmtime(0)[0]
        if year == 2000:
            _offset = _UNIX_AT_2000
        elif year == 1970:
            _offset = 0
        else:
            raise ValueError("unsupported epoch")
    return _offset


# Device seconds (time.time(), time.mktime()) -> Unix seconds.
def to_unix(t):
    return int(t) + epoch_offset()


# Unix seconds -> device seconds (for time.gmtime/localtime on this port).
def from_unix(u):
    return int(u) - epoch_offset()


# Unix seconds now, or None while the clock has not been set.
def unix_now():
    u = to_unix(time.time())
    return u if u >= _SET_AFTER else None


# The RTC in ms since the device's epoch (not checked for being set): durations across a reset.
def rtc_ms():
    return time.time_ns() // 1000000


def is_set():
    return unix_now() is not None


# The port's localtime() tuple for a Unix time (year, month, mday, hour, minute, second, ...).
def localtime(u):
    return time.localtime(from_unix(u))
