"""The chip's clock for the virtual board: the ESP32 port's epoch and an RTC that starts unset.

MicroPython's ESP32 port counts time from 2000-01-01 (py/mpconfig.h: MICROPY_EPOCH_IS_2000 is
the default, ports/esp32 does not change it); the Unix port this board runs on counts from
1970 (ports/unix/mpconfigport.h). On a chip `time.time()`, `gmtime`/`localtime` (one function:
no time zones), `mktime`, `time_ns()` and `machine.RTC().datetime()` all read ESP-IDF's system
time, which `RTC.datetime(...)` sets with `settimeofday()` (ports/esp32/machine_rtc.c,
modtime.c). The RTC timer counts from 0 at power-on, keeps counting through resets and deep
sleep, and loses everything when power goes: an unset clock reads the epoch plus the time
since power-on.

Here the supervisor owns the RTC (host_tools/sim/chipclock.py): it passes the board's epoch
(FOTA_SIM_EPOCH, 2000 unless the board's config.json says "epoch": 1970) and the RTC as an
offset from the host's CLOCK_REALTIME (FOTA_SIM_RTC_NS) to each process it starts; setting the
RTC tells it over the bus (OP_RTC_SET) so the next process, after a reset, reads the same time.
"""

import utime

import _simbus

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_UNIX_AT_2000 = const(946684800)  # 2000-01-01T00:00:00Z in Unix seconds
_NS = const(1000000000)

# Read once when the board starts (static initialisation, as in C): the wall clock is then
# plain small-int arithmetic, so reading it never allocates on the heap the firmware sees.
_shift = _UNIX_AT_2000 if _simbus.env_int("FOTA_SIM_EPOCH", 2000) == 2000 else 0  # Unix s at the epoch
_rtc_ns = _simbus.env_int("FOTA_SIM_RTC_NS", -_shift * _NS)  # device ns - host ns; no supervisor: host time


def now_ns():
    return utime.time_ns() + _rtc_ns


def now():
    return (utime.time_ns() + _rtc_ns) // _NS


# (year, month, mday, hour, minute, second, weekday, yearday) of device seconds, UTC.
def tuple_of(secs):
    return utime.gmtime(int(secs) + _shift)[:8]


# Device seconds of a date tuple (8 or 9 items, fields normalised like timeutils_mktime).
def mktime(t):
    if len(t) < 8 or len(t) > 9:
        raise TypeError("mktime needs a tuple of length 8 or 9")
    return utime.mktime(tuple(t[:6]) + (0, 0)) - _shift


# settimeofday(): the RTC now reads `secs`.`usec` in device time, here and after resets.
def set_time(secs, usec=0):
    global _rtc_ns
    _rtc_ns = secs * _NS + usec * 1000 - utime.time_ns()
    _simbus.bus().call(_simbus.OP_RTC_SET, secs & 0xFFFFFFFF, usec)


class RTC:
    """machine.RTC of the ESP32 port: datetime() reads or sets the chip's clock (UTC)."""

    def __init__(self, id=0):
        pass

    # (year, month, day, weekday, hours, minutes, seconds, subseconds in us)
    def datetime(self, datetimetuple=None):
        if datetimetuple is None:
            ns = now_ns()
            t = tuple_of(ns // _NS)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], (ns // 1000) % 1000000)
        self._set(datetimetuple, 4)
        return None

    # init((year, month, day, hours, minutes, seconds, subseconds, tzinfo)): no weekday slot
    def init(self, datetimetuple):
        self._set(datetimetuple, 3)

    def _set(self, items, hour_index):
        if len(items) != 8:
            raise ValueError("requested length 8 but object has length %d" % len(items))
        y, mo, d = items[0], items[1], items[2]
        h, mi, s = items[hour_index], items[hour_index + 1], items[hour_index + 2]
        set_time(mktime((y, mo, d, h, mi, s, 0, 0)), items[7])
