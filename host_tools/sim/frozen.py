"""What a booting slot puts where a chip has `.frozen`, and the heap that costs the Unix port.

A chip runs frozen bytecode from flash, and `esp32`, `machine`, `network`,
`_boot`, `flashbdev`, `inisetup` are built into its firmware. The virtual
board puts the slot's frozen modules and the board's own modules (compiled by
mpy-cross under their bare file names, so tracebacks read like a chip's) in one
directory per (image, board code), shared by the boards of one sim home:

    frozen = frozen_dir(home, image, modules)   # unpacked once, then cached
    extra = heap_cost(frozen)                   # bytes the Unix port spends on them

The Unix port loads each .mpy into its heap. `heap_cost` measures that without
running application code: every application module is loaded from a stub whose
module body is `return None` (same qstrs, constants and function bytecode, none
of it executed); the board's own modules are imported as they are (they are C
on a chip, so their whole footprint is the Unix port's overhead).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path

from host_tools.esp import espidf
from host_tools.image.freeze import compile_source

BOARD_DIR = Path(__file__).with_name("board")
BOARD_MODULES = ("_simbus", "_identity", "espidf", "_md5", "esp32", "_simclock", "time", "machine", "network", "ntptime",
                 "flashbdev", "inisetup", "_boot", "_simboot")
_FROZEN_ON_CHIP = ("_boot", "_simboot", "inisetup", "flashbdev", "ntptime")  # Python in the ESP32 port's firmware too
_ON_DEMAND = ("_md5",)  # imported by esp32 only when hashlib has no md5 (a build without a TLS library)
_ESPIDF = Path(espidf.__file__)  # host_tools/esp/espidf.py: product code; the board gets a compiled copy
# bytecode opcodes (py/bc0.h) and .mpy object kinds (py/persistentcode.h), MicroPython v1.28
_BC_LOAD_CONST_NONE, _BC_RETURN_VALUE = 0x51, 0x63
_OBJ_ELLIPSIS, _OBJ_STR, _OBJ_BYTES, _OBJ_TUPLE = 4, 5, 6, 10
# ROMFS (extmod/vfs_rom.c): header, then records kind + length + payload, lengths as big-endian base-128
_ROMFS_HEADER, _ROMFS_DATA, _ROMFS_DIR, _ROMFS_FILE = b"\xd2\xcd\x31", 2, 4, 5
QSTRS = "_qstrs"  # a module whose only content is every name the frozen modules use (see qstr_module)
ROMFS = "frozen.romfs"  # every .mpy of the directory as one ROMFS image: what _simboot mounts at /.frozen
HEAP_PROBE = """
import gc, os, sys, vfs
gc.collect()
base = gc.mem_alloc()
rom = bytearray(os.stat(sys.argv[1])[6])
with open(sys.argv[1], "rb") as f:
    f.readinto(rom)
vfs.mount(vfs.VfsRom(rom), "/.frozen")
sys.path[:] = ["/.frozen"]
for name in sys.argv[2:]:
    __import__(name)
gc.collect()
print(gc.mem_alloc() - base)
"""


def _board_sources() -> dict[str, bytes]:
    files = {name: BOARD_DIR / f"{name}.py" for name in BOARD_MODULES}
    files["espidf"] = _ESPIDF
    return {name: path.read_bytes() for name, path in files.items()}


def board_digest() -> str:
    h = hashlib.sha256(ROMFS.encode())  # the layout of the directory, then the board's code
    for name, src in sorted(_board_sources().items()):
        h.update(name.encode() + b"\0" + src)
    return h.hexdigest()[:12]


_compiled: dict[str, dict[str, bytes]] = {}
_compiled_lock = threading.Lock()


def _board_mpys(digest: str) -> dict[str, bytes]:
    """The board's modules compiled by mpy-cross, once per board digest in this process: a dozen mpy-cross runs
    took ~0.5 s at every first boot of a new image, inside the board's reset (its RTC runs on, so the sensor
    example's reported downtime carried it; a chip compiles nothing at a reset)."""
    with _compiled_lock:
        if digest not in _compiled:
            _compiled[digest] = {name: compile_source(src, f"{name}.py") for name, src in _board_sources().items()}
        return _compiled[digest]


def frozen_dir(home: Path, image: bytes, unpack) -> Path:
    """The directory a slot with `image` boots with (app modules + board modules), made once."""
    target = home / ".frozen" / f"{hashlib.sha256(image).hexdigest()[:16]}-{board_digest()}"
    if target.exists():
        return target
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in unpack(image).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    for name, mpy in _board_mpys(board_digest()).items():
        (tmp / f"{name}.mpy").write_bytes(mpy)
    (tmp / f"{QSTRS}.mpy").write_bytes(qstr_module([p.read_bytes() for p in sorted(tmp.rglob("*.mpy"))]))
    (tmp / ROMFS).write_bytes(romfs_image(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another board of this home made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _romfs_record(kind: int, payload: bytes) -> bytes:
    return _encode_uint(kind) + _encode_uint(len(payload)) + payload


def _romfs_dir(directory: Path) -> bytes:
    out = bytearray()
    for path in sorted(directory.iterdir()):
        name = path.name.encode("ascii")
        if path.is_dir():
            out += _romfs_record(_ROMFS_DIR, _encode_uint(len(name)) + name + _romfs_dir(path))
        elif path.suffix == ".mpy":
            data = _romfs_record(_ROMFS_DATA, path.read_bytes())
            out += _romfs_record(_ROMFS_FILE, _encode_uint(len(name)) + name + data)
    return bytes(out)


def romfs_image(directory: Path) -> bytes:
    """The .mpy files under `directory` as a ROMFS image (extmod/vfs_rom.c; mpremote's romfs writer writes the same)."""
    body = _romfs_dir(directory)
    size = _encode_uint(len(body))
    if (3 + len(size) + len(body)) % 2:
        size = b"\x80" + size  # the image's length is even
    return _ROMFS_HEADER + size + body


def _read_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        b = data[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos


def _encode_uint(value: int) -> bytes:  # big-endian base-128: .mpy's varuint and ROMFS's lengths alike
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.insert(0, 0x80 | (value & 0x7F))
        value >>= 7
    return bytes(out)


def _skip_obj(data: bytes, pos: int) -> int:
    kind = data[pos]
    pos += 1
    if kind <= _OBJ_ELLIPSIS:
        return pos
    n, pos = _read_uint(data, pos)
    if kind == _OBJ_TUPLE:
        for _ in range(n):
            pos = _skip_obj(data, pos)
        return pos
    return pos + n + (1 if kind in (_OBJ_STR, _OBJ_BYTES) else 0)


def _qstr_section(mpy: bytes) -> tuple[list[bytes], int, int]:
    """The non-static qstrs of a bytecode .mpy v6, where its qstr count starts and where its qstr table ends."""
    if mpy[:2] != b"M\x06" or mpy[2] >> 2 & 0x2F:
        raise ValueError("not a bytecode-only .mpy of version 6")
    n_qstr, pos = _read_uint(mpy, 4)
    n_obj, pos = _read_uint(mpy, pos)
    names = []
    for _ in range(n_qstr):
        n, pos = _read_uint(mpy, pos)
        if not n & 1:  # odd: an index into the port's static qstrs, already in ROM
            names.append(mpy[pos : pos + (n >> 1)])
            pos += (n >> 1) + 1
    return names, 4, pos


def qstr_module(mpys: list[bytes]) -> bytes:
    """An empty module whose qstr table holds every name of `mpys`: importing it interns them all.

    On a chip the names of frozen modules are in flash (the frozen qstr pool); the Unix port interns a
    module's names into pools on the heap when it loads the module, and each new pool is twice the last,
    allocated wherever the heap has room at that moment. `_simboot` imports this module (and drops it)
    before the application runs, so those pools sit at the bottom of the heap with the board's own objects
    instead of between the application's.
    """
    base = stub_module(compile_source(b"", f"{QSTRS}.py"))
    have, start, end = _qstr_section(base)
    n_qstr, pos = _read_uint(base, start)
    n_obj, pos = _read_uint(base, pos)
    extra = []
    seen = set(have)
    for mpy in mpys:
        for name in _qstr_section(mpy)[0]:
            if name not in seen:
                seen.add(name)
                extra.append(_encode_uint(len(name) << 1) + name + b"\0")
    return base[:start] + _encode_uint(n_qstr + len(extra)) + _encode_uint(n_obj) + base[pos:end] + b"".join(extra) + base[end:]


def stub_module(mpy: bytes) -> bytes:
    """The same .mpy with the module body replaced by `return None`: loading it costs the same, running it does nothing."""
    if mpy[:2] != b"M\x06" or mpy[2] >> 2 & 0x2F:
        raise ValueError("not a bytecode-only .mpy of version 6")
    pos = 4
    n_qstr, pos = _read_uint(mpy, pos)
    n_obj, pos = _read_uint(mpy, pos)
    for _ in range(n_qstr):
        n, pos = _read_uint(mpy, pos)
        if not n & 1:
            pos += (n >> 1) + 1
    for _ in range(n_obj):
        pos = _skip_obj(mpy, pos)
    head_end = pos
    kind_len, pos = _read_uint(mpy, pos)
    body = mpy[pos : pos + (kind_len >> 3)]
    rest = mpy[pos + (kind_len >> 3) :]
    # prelude: signature (xSSSSEAA, continued while bit 7), then size (n_info, n_cell), then info + cells
    p = 0
    while body[p] & 0x80:
        p += 1
    p += 1
    n_info = n_cell = shift = 0
    while True:
        z = body[p]
        p += 1
        n_cell |= (z & 1) << (shift // 6)
        n_info |= ((z & 0x7E) >> 1) << shift
        shift += 6
        if not z & 0x80:
            break
    code = body[: p + n_info + n_cell] + bytes([_BC_LOAD_CONST_NONE, _BC_RETURN_VALUE])
    return mpy[:head_end] + _encode_uint(len(code) << 3 | (kind_len & 7)) + code + rest


# A board's heap is a chip's (ESP32: 32-bit words). The 64-bit Unix port stores every pointer, small int
# and object header in 8 bytes, so the same application needs more heap there: module objects, dicts,
# lists, closures up to twice as much, byte buffers the same. The board gives a 64-bit interpreter
# WORD_SCALE_64 times the chip's heap: the smallest ratio, over the update workloads the tests run in a
# 64 KiB chip heap, of the smallest heap in which each completes on the 64-bit port to the smallest on a
# 32-bit build of the same MicroPython (`make micropython32`; docs/BOARD.md "A chip's heap on a 64-bit
# interpreter" has the table). The smallest ratio, so that these workloads cannot pass here and fail on
# the 32-bit build; that build (FOTA_MICROPYTHON=build/micropython32/micropython) runs them at the chip's
# size itself.
WORD_SCALE_64 = 1.25


def interpreter_heap(chip_heap: int, small_int_bits: int) -> int:
    """The interpreter's share of a `chip_heap` board (before the frozen modules' loading is added)."""
    return chip_heap if small_int_bits <= 31 else int(chip_heap * WORD_SCALE_64)


def heap_cost(frozen: Path, micropython: str) -> int:
    """Heap bytes the Unix port spends on `frozen` that a chip keeps in flash (cached per directory)."""
    cache = frozen / f".heapcost-{zlib.crc32(micropython.encode()):08x}"  # a 32-bit build's objects are half the size
    if cache.exists():
        return int(cache.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp)
        names = []
        for path in sorted(frozen.rglob("*.mpy")):
            rel = path.relative_to(frozen)
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            (probe / rel).parent.mkdir(parents=True, exist_ok=True)
            # the board's runtime modules are C on a chip: their whole footprint is overhead; the boot
            # modules are frozen on a chip too (and touch the flash at import): only their loading is
            board = rel.stem in BOARD_MODULES and len(rel.parts) == 1 and rel.stem not in _FROZEN_ON_CHIP
            (probe / rel).write_bytes(path.read_bytes() if board else stub_module(path.read_bytes()))
            if rel.stem not in _ON_DEMAND:
                names.append(name)
        stub_rom = probe / ROMFS
        stub_rom.write_bytes(romfs_image(probe))
        extra = (frozen / ROMFS).stat().st_size - stub_rom.stat().st_size  # the real bodies' bytes in the image
        env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
        env["MICROPYPATH"] = str(probe)
        out = subprocess.run([micropython, "-X", "heapsize=8M", "-c", HEAP_PROBE, str(stub_rom), *names],
                             capture_output=True, text=True, timeout=60, cwd=tmp, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"heap probe failed: {out.stdout}{out.stderr}")
    cost = int(out.stdout.strip()) + extra
    tmpfile = cache.with_name(f".heapcost.{os.getpid()}.{threading.get_ident()}")
    tmpfile.write_text(str(cost))
    tmpfile.replace(cache)
    return cost
