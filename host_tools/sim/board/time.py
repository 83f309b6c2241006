"""time for the virtual board: the ESP32 port's module, epoch 2000 (or 1970 if configured).

The Unix port's built-in `time` is extensible (extmod/modtime.c MP_REGISTER_EXTENSIBLE_MODULE),
so this file on MICROPYPATH is what `import time` finds (py/builtinimport.c tries the
filesystem before extensible built-ins); `utime` still names the built-in (py/objmodule.c,
mp_module_get_builtin: `ufoo` forces the extensible built-in `foo`). Wall-clock functions read
the chip's clock (_simclock); ticks and sleeps are the port's own. As on the ESP32, there are
no time zones: localtime is gmtime, and both give 8-tuples.
"""

from utime import sleep, sleep_ms, sleep_us, ticks_add, ticks_cpu, ticks_diff, ticks_ms, ticks_us  # noqa: F401

import _simclock


def time():
    return _simclock.now()


def time_ns():
    return _simclock.now_ns()


def localtime(secs=None):
    return _simclock.tuple_of(_simclock.now() if secs is None else secs)


gmtime = localtime  # extmod/modtime.c maps both names to one function


def mktime(t):
    return _simclock.mktime(t)
