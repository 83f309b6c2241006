"""Sim app images: real ESP32 app images whose DROM segment carries frozen modules.

The first segment starts with `esp_app_desc_t` (file offset 0x20) and goes on
with a frozen-module archive: b"FRZ1", u32 count, then per module u16 name
length, the name (a path such as "fota/agent.mpy"), u32 data length, the data.
Booting a slot extracts the archive and puts it on the board's sys.path where
a real board has `.frozen`.

    image = build_sim_image({"app.mpy": mpy_bytes}, version="1.0.0")
    modules = frozen_modules(image)
"""

from __future__ import annotations

import struct

from host_tools.esp.app_image import DROM_BASE, ImageError, Segment, app_desc, build_app_image, parse_app_image

ARCHIVE_MAGIC = b"FRZ1"
APP_DESC_SIZE = 256
PROJECT_NAME = "fota-sim"


def pack_modules(modules: dict[str, bytes]) -> bytes:
    out = bytearray(ARCHIVE_MAGIC + struct.pack("<I", len(modules)))
    for name in sorted(modules):
        raw = name.encode()
        out += struct.pack("<H", len(raw)) + raw + struct.pack("<I", len(modules[name])) + modules[name]
    return bytes(out)


def unpack_modules(blob: bytes) -> dict[str, bytes]:
    if blob[:4] != ARCHIVE_MAGIC:
        raise ImageError("no frozen-module archive in the app image")
    (count,) = struct.unpack_from("<I", blob, 4)
    pos, modules = 8, {}
    for _ in range(count):
        (nlen,) = struct.unpack_from("<H", blob, pos)
        name = blob[pos + 2 : pos + 2 + nlen].decode()
        (dlen,) = struct.unpack_from("<I", blob, pos + 2 + nlen)
        start = pos + 6 + nlen
        if ".." in name.split("/") or name.startswith("/"):
            raise ImageError(f"frozen module name {name!r} escapes the frozen tree")
        modules[name] = blob[start : start + dlen]
        pos = start + dlen
    return modules


def build_sim_image(modules: dict[str, bytes], *, version: str = "", chip_id: int = 0, secure_version: int = 0) -> bytes:
    """An app image for the sim board holding `modules` (name -> .mpy or .py bytes)."""
    desc = app_desc(version=version, project_name=PROJECT_NAME, secure_version=secure_version)
    return build_app_image([Segment(DROM_BASE, desc + pack_modules(modules))], chip_id=chip_id)


def frozen_modules(image: bytes, *, chip_id: int | None = None) -> dict[str, bytes]:
    """The frozen modules of a valid sim image."""
    info = parse_app_image(image, chip_id=chip_id)
    return unpack_modules(info.segments[0].data[APP_DESC_SIZE:])
