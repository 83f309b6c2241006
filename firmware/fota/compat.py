"""The one place for what MicroPython has and CPython lacks, so every module imports under both.

    from .compat import const, ticks_ms, ticks_diff, ticks_add, sleep_ms, getrandbits

On the device these are MicroPython's own (`const` folds at compile time: mpy-cross recognises
`_X = const(...)` by name, whichever module the name came from). Under CPython (tests, host tools)
they are plain functions with the same results: ticks from a monotonic clock, no wrap-around.
"""

try:
    from micropython import const
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    from time import monotonic  # pyright: ignore[reportAttributeAccessIssue] - CPython only
    from time import sleep as _sleep

    def const(x):
        return x

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_add(a, b):
        return a + b

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        _sleep(ms / 1000)


try:
    from random import getrandbits
except ImportError:  # a port without random: os.urandom

    def getrandbits(n):
        from os import urandom

        return int.from_bytes(urandom(4), "big") & ((1 << n) - 1)


# An empty io.BytesIO with `size` bytes reserved (py/objstringio.c); CPython's takes no size hint.
def bytes_io(size):
    import io

    try:
        return io.BytesIO(size)
    except TypeError:  # CPython
        return io.BytesIO()


# esp32.NVS("fota"): where the download journal and the report counter live (small values rewritten often:
# one atomic nvs_commit each, where a LittleFS file cost ~1 s of flash work at ESP32 speed). None without it
# (CPython, a port or board without NVS): the callers then keep a file.
def nvs():
    try:
        import esp32

        return esp32.NVS("fota")
    except (ImportError, AttributeError, OSError):  # OSError: no nvs partition
        return None
