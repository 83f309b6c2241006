"""What the board says it is: sys, os and io as the ESP32 port of MicroPython has them.

The interpreter is the Unix port; `install()` puts chip-shaped `sys`, `os` and
`io` modules into `sys.modules`, so `import sys` anywhere after boot gets
`sys.platform == "esp32"`, the ESP32 port's `sys.implementation`, `sys.version`
and `os.uname()` (values from the supervisor, which keeps them in one place),
`io.BufferedWriter` (on the ESP32, not on the Unix port), and an `os.listdir("/")`
without the `/.frozen` mount (on a chip frozen modules are no directory).
Everything else is the Unix port's own module, reached through `__getattr__`.
"""

import io as _io
import os as _os
import sys as _sys

from collections import namedtuple

_Impl = namedtuple("", ("name", "version", "_machine", "_mpy", "_build", "_thread"))
_Uname = namedtuple("", ("sysname", "nodename", "release", "version", "machine"))


class _Module:
    # A stand-in module: its own attributes first, then the Unix port's module.
    def __init__(self, real, **attrs):
        for name, value in attrs.items():
            setattr(self, name, value)
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


def _env(name, default):
    value = _os.getenv(name)
    return value if value else default


class BufferedWriter:
    """io.BufferedWriter(stream, size): writes only whole `size` chunks; flush() writes the rest (py/modio.c)."""

    def __init__(self, stream, size):
        self._stream = stream
        self._buf = bytearray(size)
        self._len = 0

    def write(self, data):
        mv = memoryview(data)
        size = len(self._buf)
        done = 0
        while done < len(mv):
            n = min(size - self._len, len(mv) - done)
            self._buf[self._len : self._len + n] = mv[done : done + n]
            self._len += n
            done += n
            if self._len == size:
                self._stream.write(self._buf)
                self._len = 0
        return len(mv)

    def flush(self):
        if self._len:
            self._stream.write(memoryview(self._buf)[: self._len])
            self._len = 0
        if hasattr(self._stream, "flush"):
            self._stream.flush()


def _is_root(path):
    return path == "/" or (path in ("", ".") and _os.getcwd() == "/")


def _listdir(path=""):
    names = _os.listdir(path) if path else _os.listdir()
    return [n for n in names if n != ".frozen"] if _is_root(path) else names


def _ilistdir(path=""):
    root = _is_root(path)
    for entry in _os.ilistdir(path) if path else _os.ilistdir():
        if not (root and entry[0] == ".frozen"):
            yield entry


_open = open
_open_files = []


def _open_kept(*args, **kwargs):
    # This Unix build has no finaliser: an unclosed file that the GC frees stays linked in LittleFS's
    # list of open files and the next commit crashes the interpreter. A chip's GC closes such a file;
    # the board keeps it open instead (closed files are dropped from the list at the next open).
    i = 0
    while i < len(_open_files):
        try:
            _open_files[i].tell()
            i += 1
        except (OSError, ValueError):
            _open_files.pop(i)
    f = _open(*args, **kwargs)
    _open_files.append(f)
    return f


emergency_buf = 0  # micropython.alloc_emergency_exception_buf(size): esp32's errors use it with the heap locked


def _alloc_emergency_exception_buf(size):
    # on the ESP32 port (MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF, size 0: allocated at run time), not on Unix
    global emergency_buf
    emergency_buf = max(0, int(size))


def install():
    release = _env("FOTA_SIM_VERSION", "1.28.0")
    machine = _env("FOTA_SIM_MACHINE", "Generic ESP32 module with ESP32")
    date = _sys.version.split()[-1]
    version = "v%s on %s" % (release, date)
    parts = release.split(".")
    impl = _Impl(
        "micropython",
        (int(parts[0]), int(parts[1]), int(parts[2]), ""),
        machine,
        int(_env("FOTA_SIM_MPY", "11014")),
        _env("FOTA_SIM_BUILD", "ESP32_GENERIC"),
        "GIL",
    )
    uname = _Uname("esp32", "esp32", release, version, machine)
    _sys.modules["sys"] = _Module(_sys, platform="esp32", implementation=impl, version="3.4.0; MicroPython " + version)
    _sys.modules["os"] = _Module(_os, uname=lambda: uname, listdir=_listdir, ilistdir=_ilistdir)
    _sys.modules["io"] = _Module(_io, BufferedWriter=BufferedWriter)
    import micropython

    _sys.modules["micropython"] = _Module(micropython, alloc_emergency_exception_buf=_alloc_emergency_exception_buf)
    import builtins

    builtins.open = _open_kept
