"""`fota build`: the app image an update carries, for the sim board or a real one.

For `sim`: firmware/ (compiled with mpy-cross) plus the application's modules
are frozen into a sim app image. For a real board: the MicroPython/ESP-IDF app
image (`micropython.bin`) is validated against the board: header, chip id,
checksum, appended SHA-256, and that it fits the OTA slot. A merged
`firmware.bin` (bootloader + partition table + app) is refused with a pointer
to the right file.

    image = build_image(BuildSpec(board="sim", app_dir=Path("app"), version="1.2.0", secure_version=7))
    image = stamp_secure_version(image, 8)   # esp_app_desc_t.secure_version = the package sequence

The package sequence lives in the image too (esp_app_desc_t.secure_version, docs/FORMAT.md
"Anti-rollback"): a device derives its floor from the image it runs when every file is lost.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from host_tools.esp import boards, espidf
from host_tools.esp.app_image import ImageError, parse_app_image
from host_tools.firmware import FIRMWARE_DIR
from host_tools.image.freeze import freeze_sources, freeze_tree
from host_tools.image.keys import PublicKey, trusted_keys_module
from host_tools.image.sim_image import build_sim_image

FIRMWARE_BIN_HINT = (
    "use the app image: micropython.bin from ports/esp32/build-<BOARD>/ (served for OTA as *.app-bin), "
    "not firmware.bin"
)


@dataclass(frozen=True)
class BuildSpec:
    board: str
    version: str = ""
    app_dir: Path | None = None
    image: Path | None = None
    extra_modules: tuple[tuple[str, str], ...] = ()
    trusted_keys: tuple[PublicKey, ...] = ()
    root_keys: tuple[PublicKey, ...] = ()
    secure_version: int = 0  # esp_app_desc_t.secure_version: the sequence of the package that carries it
    firmware_dir: Path = FIRMWARE_DIR
    agent: bool = True  # False: a "stock" sim image without firmware/ frozen (the agent is mip-installed to the filesystem)


def build_image(spec: BuildSpec) -> bytes:
    board = boards.load(spec.board)
    if spec.image is not None:
        image = spec.image.read_bytes()
    elif board.name == "sim":
        image = _build_sim(spec, board.chip_id)
    else:
        raise ImageError(f"board {board.name}: give the MicroPython app image (--image micropython.bin)")
    check_app_image(image, board)
    if spec.secure_version:
        image = stamp_secure_version(image, spec.secure_version)
    return image


SECURE_VERSION_AT = espidf.APP_DESC_OFFSET + 4  # esp_app_desc_t.secure_version (u32)


def secure_version(image: bytes) -> int | None:
    """esp_app_desc_t.secure_version of an app image, or None when it has no app descriptor."""
    at = espidf.APP_DESC_OFFSET
    if len(image) < SECURE_VERSION_AT + 4 or struct.unpack_from("<I", image, at)[0] != espidf.APP_DESC_MAGIC:
        return None
    return struct.unpack_from("<I", image, SECURE_VERSION_AT)[0]


def stamp_secure_version(image: bytes, value: int) -> bytes:
    """The image with esp_app_desc_t.secure_version = value; checksum and appended SHA-256 redone.

    The descriptor is in the first segment, so the XOR checksum changes by the bytes that
    changed; the SHA-256 (when appended) is recomputed. An image with a Secure Boot signature
    block would need re-signing: MicroPython builds carry none.
    """
    if not 0 <= value <= 0xFFFFFFFF:
        raise ImageError(f"secure_version {value} does not fit in 32 bits")
    if secure_version(image) is None:
        raise ImageError("no esp_app_desc_t at offset 0x20: cannot stamp the secure version")
    out = bytearray(image)
    old = bytes(out[SECURE_VERSION_AT : SECURE_VERSION_AT + 4])
    new = struct.pack("<I", value)
    if old == new:
        return bytes(image)
    out[SECURE_VERSION_AT : SECURE_VERSION_AT + 4] = new
    pos = espidf.HEADER_SIZE
    for _ in range(out[1]):
        pos += 8 + struct.unpack_from("<I", out, pos + 4)[0]
    checksum_at = pos + 15 - pos % 16
    for a, b in zip(old, new):
        out[checksum_at] ^= a ^ b
    if out[23] == 1:
        out[checksum_at + 1 : checksum_at + 33] = hashlib.sha256(out[: checksum_at + 1]).digest()
    parse_app_image(bytes(out))  # the same checks esp_image_verify does
    return bytes(out)


def _build_sim(spec: BuildSpec, chip_id: int) -> bytes:
    modules = freeze_tree(spec.firmware_dir) if spec.agent and spec.firmware_dir.exists() else {}
    if spec.app_dir is not None:
        if not spec.app_dir.is_dir():
            raise ImageError(f"application directory {spec.app_dir} does not exist")
        modules.update(freeze_tree(spec.app_dir))
    sources = dict(spec.extra_modules)
    if spec.trusted_keys or spec.root_keys:
        sources["trusted_keys.py"] = trusted_keys_module(list(spec.trusted_keys), list(spec.root_keys))
    modules.update(freeze_sources(sources))
    return build_sim_image(modules, version=spec.version, chip_id=chip_id)


def check_app_image(image: bytes, board: boards.BoardDef) -> None:
    """Refuse what the board's bootloader would refuse, or what is no app image at all."""
    for table_at in (0x7000, 0x8000):
        if image[table_at : table_at + 2] == b"\xaa\x50":
            raise ImageError(
                "this is a merged firmware.bin (bootloader + partition table + app), which OTA cannot install",
                hint=FIRMWARE_BIN_HINT,
            )
    info = parse_app_image(image, chip_id=board.chip_id, chip_rev=board.chip_rev)
    if info.app_desc is None:
        raise ImageError(
            f"no esp_app_desc_t (magic 0x{espidf.APP_DESC_MAGIC:08X}) at offset 0x20: not an application image "
            "(a bootloader image?)",
            hint=FIRMWARE_BIN_HINT,
        )
    if info.length > board.slot_size:
        raise ImageError(f"image is {info.length} bytes; the {board.name} OTA slot holds {board.slot_size}")
