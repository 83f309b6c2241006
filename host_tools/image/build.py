"""`fota build`: the app image an update carries, for the sim board or a real one.

For `sim`: firmware/ (compiled with mpy-cross) plus the application's modules
are frozen into a sim app image. For a real board: the MicroPython/ESP-IDF app
image (`micropython.bin`) is validated against the board: header, chip id,
checksum, appended SHA-256, and that it fits the OTA slot. A merged
`firmware.bin` (bootloader + partition table + app) is refused with a pointer
to the right file.

    image = build_image(BuildSpec(board="sim", app_dir=Path("app"), version="1.2.0"))
"""

from __future__ import annotations

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
    firmware_dir: Path = FIRMWARE_DIR


def build_image(spec: BuildSpec) -> bytes:
    board = boards.load(spec.board)
    if board.name == "sim":
        image = _build_sim(spec, board.chip_id)
    else:
        if spec.image is None:
            raise ImageError(f"board {board.name}: give the MicroPython app image (--image micropython.bin)")
        image = spec.image.read_bytes()
    check_app_image(image, board)
    return image


def _build_sim(spec: BuildSpec, chip_id: int) -> bytes:
    modules = freeze_tree(spec.firmware_dir) if spec.firmware_dir.exists() else {}
    if spec.app_dir is not None:
        if not spec.app_dir.is_dir():
            raise ImageError(f"application directory {spec.app_dir} does not exist")
        modules.update(freeze_tree(spec.app_dir))
    sources = dict(spec.extra_modules)
    if spec.trusted_keys:
        sources["trusted_keys.py"] = trusted_keys_module(list(spec.trusted_keys))
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
