"""Board definitions (boards/<name>/): the data that host tools, the sim and real builds share.

Every board: board.json loads, its partition table survives CSV -> ESP-IDF binary -> our parser,
OTA slots are 64 KiB aligned and equal, the table fits the flash beside the bootloader, and the
images we ship fit the slots. Real boards (those with mpconfigboard.cmake) also: the sdkconfig
fragment keeps rollback with confirmation by the app, the MicroPython board files point at this
directory, and scripts/build_firmware.sh says what to install when ESP-IDF or MicroPython is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.esp import boards
from host_tools.esp.app_image import CHIP_IDS, DROM_BASE, Segment, app_desc, build_app_image
from host_tools.esp.partition_table import APP_ALIGN, TABLE_MAX_LENGTH, PartitionTable
from host_tools.image.build import BuildSpec, build_image

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_firmware.sh"
ALL_BOARDS = boards.available()
REAL_BOARDS = [n for n in ALL_BOARDS if (boards.BOARDS_DIR / n / "mpconfigboard.cmake").exists()]
KEYS = {
    "name",
    "chip",
    "chip_id",
    "chip_rev",
    "flash_size",
    "flash_bytes",
    "bootloader_offset",
    "partition_table_offset",
    "partitions",
    "slot_size",
    "hw_revs",
}  # + "heap" on real boards (host_tools.esp.boards gives the sim 128k)
SECOND_STAGE_BOOTLOADER = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
# A MicroPython v1.20 ESP32_GENERIC app image: the size the 4 MiB OTA slots were cut for.
MICROPYTHON_IMAGE_BYTES = 1_558_512
# SHA-256 of the 0xC00-byte table that ESP-IDF's gen_esp32part.py writes for each partitions.csv.
# A change here changes what sits at 0x8000: devices in the field need a USB reflash for it.
GEN_ESP32PART_SHA256 = {
    "esp32_generic": "6be7eea304c9a4afdccf3e50a9a37d9b73148c8da371972bab23367e7c479c6d",
    "esp32s3_8mb": "548ce66e79dbeec92db567b4bd1b79e84c12f78b393ed1cba3637239ceb34341",
    "sim": "6be7eea304c9a4afdccf3e50a9a37d9b73148c8da371972bab23367e7c479c6d",
}
INSTALL_HINTS = (
    "IDF_PATH",
    "MICROPY_DIR",
    ". $IDF_PATH/export.sh",
    "v5.2 .. v5.5",
    "https://github.com/espressif/esp-idf",
    "install.sh",
    "git clone --branch v1.28.0 https://github.com/micropython/micropython",
    "make -C ~/src/micropython/mpy-cross",
)


def meta(name: str) -> dict:
    return json.loads((boards.BOARDS_DIR / name / "board.json").read_text())


def table(name: str) -> PartitionTable:
    m = meta(name)
    return PartitionTable.from_csv((boards.BOARDS_DIR / name / m["partitions"]).read_text(), m["partition_table_offset"])


# sdkconfig lines as {name: value}; "# CONFIG_X is not set" reads as "n".
def sdkconfig(name: str) -> dict[str, str]:
    values = {}
    for line in (boards.BOARDS_DIR / name / "sdkconfig.board").read_text().splitlines():
        unset = re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip())
        if unset:
            values[unset.group(1)] = "n"
        elif line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            values[key] = value.strip()
    return values


def run_build_script(board: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BUILD_SCRIPT), board], env=env, capture_output=True, text=True, timeout=60)


def env_without_toolchain() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("IDF_PATH", "MICROPY_DIR")}


def test_every_board_directory_is_a_board():
    dirs = sorted(p.name for p in boards.BOARDS_DIR.iterdir() if p.is_dir())
    assert dirs == ALL_BOARDS
    assert {"sim", "esp32_generic", "esp32s3_8mb"} <= set(ALL_BOARDS)
    assert {"esp32_generic", "esp32s3_8mb"} <= set(REAL_BOARDS)


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_board_json_loads_and_agrees_with_itself(name):
    board = boards.load(name)
    m = meta(name)
    assert KEYS <= m.keys()
    if name in REAL_BOARDS:
        assert "heap" in m
    assert board.name == m["name"] == name
    assert board.chip_id == CHIP_IDS[board.chip]
    assert board.flash_bytes == int(m["flash_size"].removesuffix("MB")) << 20
    assert board.slot_size == m["slot_size"]
    assert board.hw_revs


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_partition_csv_to_esp_idf_binary_and_back(name):
    t = table(name)
    blob = t.to_binary()
    assert len(blob) == TABLE_MAX_LENGTH
    assert blob[:2] == b"\xaa\x50"
    assert PartitionTable.from_binary(blob) == t
    digest = hashlib.sha256(blob).hexdigest()
    assert name in GEN_ESP32PART_SHA256, f"pin the new table: GEN_ESP32PART_SHA256[{name!r}] = {digest!r}"
    assert digest == GEN_ESP32PART_SHA256[name]


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_partition_csv_matches_gen_esp32part_when_esp_idf_is_here(name, tmp_path):
    tool = Path(os.environ.get("IDF_PATH", "/nonexistent")) / "components/partition_table/gen_esp32part.py"
    if not tool.exists():
        pytest.skip("IDF_PATH not set: the pinned digests stand in for gen_esp32part.py")
    m = meta(name)
    out = tmp_path / "table.bin"
    subprocess.run(
        [
            sys.executable,
            str(tool),
            "-q",
            "--offset",
            hex(m["partition_table_offset"]),
            "--flash-size",
            m["flash_size"],
            str(boards.BOARDS_DIR / name / m["partitions"]),
            str(out),
        ],
        check=True,
        timeout=60,
    )
    assert out.read_bytes() == table(name).to_binary()


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_ota_slots_are_aligned_and_equal(name):
    slots = table(name).ota_slots()
    assert len(slots) >= 2
    assert all(s.offset % APP_ALIGN == 0 and s.size % APP_ALIGN == 0 for s in slots)
    assert len({s.size for s in slots}) == 1
    assert slots[0].size == meta(name)["slot_size"]


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_table_fits_flash_and_clears_bootloader_and_table(name):
    board = boards.load(name)
    parts = sorted(board.table.partitions, key=lambda p: p.offset)
    assert board.bootloader_offset == SECOND_STAGE_BOOTLOADER[board.chip]
    assert board.bootloader_offset < board.partition_table_offset
    assert parts[0].offset >= board.partition_table_offset + 0x1000  # the table owns one 4 KiB sector
    assert parts[-1].end <= board.flash_bytes
    otadata = board.table.otadata()
    assert otadata is not None and otadata.size == 0x2000
    if name in REAL_BOARDS:  # MicroPython gives whatever follows the table to vfs: ours says so
        assert parts[-1].name == "vfs" and parts[-1].end == board.flash_bytes


@pytest.fixture(scope="module")
def sim_image() -> bytes:
    return build_image(BuildSpec(board="sim", version="1.0.0"))


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_the_images_we_build_fit_every_slot(name, sim_image):
    slot = boards.load(name).slot_size
    assert len(sim_image) <= slot
    if name in REAL_BOARDS:
        assert MICROPYTHON_IMAGE_BYTES <= slot


def test_a_micropython_sized_image_fits_the_4mib_slot():
    board = boards.load("esp32_generic")
    assert board.slot_size == 0x180000
    assert 0x180000 - MICROPYTHON_IMAGE_BYTES == 14_352  # tight: the sdkconfig keeps size checks silent


@pytest.mark.parametrize("name", REAL_BOARDS)
def test_sdkconfig_keeps_rollback_confirmed_by_the_app(name):
    cfg = sdkconfig(name)
    assert cfg["CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE"] == "y"  # ESP-IDF <= 6.1
    assert cfg["CONFIG_BOOTLOADER_APP_ROLLBACK"] == "y"  # ESP-IDF 6.2 name
    assert cfg["CONFIG_BOOTLOADER_APP_ROLLBACK_CONFIRM_BY_APP"] == "y"
    assert cfg["CONFIG_BOOTLOADER_APP_ROLLBACK_CONFIRM_ON_STARTUP"] == "n"  # 6.2's default would auto-confirm
    assert cfg.get("CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK", "n") == "n"


@pytest.mark.parametrize("name", REAL_BOARDS)
def test_sdkconfig_flash_and_partition_table_match_board_json(name):
    cfg, m = sdkconfig(name), meta(name)
    assert cfg[f"CONFIG_ESPTOOLPY_FLASHSIZE_{m['flash_size']}"] == "y"
    assert [k for k, v in cfg.items() if k.startswith("CONFIG_ESPTOOLPY_FLASHSIZE_") and v == "y"] == [
        f"CONFIG_ESPTOOLPY_FLASHSIZE_{m['flash_size']}"
    ]
    assert cfg["CONFIG_PARTITION_TABLE_CUSTOM"] == "y"
    assert int(cfg["CONFIG_PARTITION_TABLE_OFFSET"], 0) == m["partition_table_offset"]


@pytest.mark.parametrize("name", REAL_BOARDS)
def test_micropython_board_files_point_at_this_directory(name):
    board_dir = boards.BOARDS_DIR / name
    cmake = (board_dir / "mpconfigboard.cmake").read_text()
    assert "${MICROPY_BOARD_DIR}/sdkconfig.board" in cmake
    assert 'CONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\\"${MICROPY_BOARD_DIR}/partitions.csv\\"' in cmake
    assert "set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)" in cmake
    target = re.search(r"set\(IDF_TARGET (\w+)\)", cmake)
    assert (target.group(1) if target else "esp32") == meta(name)["chip"]
    assert (board_dir / "mpconfigboard.h").exists()  # ports/esp32/mpconfigport.h includes it


@pytest.mark.parametrize("name", REAL_BOARDS)
def test_freeze_manifest_freezes_firmware_packages(name):
    board_dir = boards.BOARDS_DIR / name
    path_vars = {"MPY_DIR": "/mpy", "PORT_DIR": "/mpy/ports/esp32", "BOARD_DIR": str(board_dir)}
    calls = []

    def resolve(path):  # what tools/manifestfile.py does with $(VAR) paths
        for var, value in path_vars.items():
            path = path.replace(f"$({var})", value)
        return Path(os.path.normpath(board_dir / path))

    def package(name, files=None, base_path=".", opt=None):
        calls.append(("package", name, resolve(base_path)))

    api = {
        "include": lambda path, **kw: calls.append(("include", resolve(path))),
        "package": package,
        "module": lambda *a, **kw: calls.append(("module", a)),
        "freeze": lambda *a, **kw: calls.append(("freeze", a)),
        "require": lambda *a, **kw: calls.append(("require", a)),
    }
    exec(compile((board_dir / "manifest.py").read_text(), str(board_dir / "manifest.py"), "exec"), api)
    assert calls[0] == ("include", Path("/mpy/ports/esp32/boards/manifest.py"))
    packages = {c[1]: c[2] for c in calls if c[0] == "package"}
    assert set(packages) == {"fota"}
    for pkg, base in packages.items():
        assert base == ROOT / "firmware"
        assert (base / pkg / "__init__.py").exists()


def test_build_script_without_toolchain_says_what_to_install():
    proc = run_build_script("esp32_generic", env_without_toolchain())
    assert proc.returncode == 2
    for hint in INSTALL_HINTS:
        assert hint in proc.stderr, hint
    assert "IDF_PATH is not set" in proc.stderr and "MICROPY_DIR is not set" in proc.stderr


def test_build_script_refuses_the_sim_and_unknown_boards():
    for board, message in (("sim", "fota build --board sim"), ("nope", "unknown board")):
        proc = run_build_script(board, env_without_toolchain())
        assert proc.returncode == 2
        assert message in proc.stderr


# A stand-in ESP-IDF (export.sh puts an idf.py that prints `version` on PATH) and MicroPython
# checkout (ports/esp32/Makefile "builds" a given app image and logs the variables it got).
def fake_toolchain(tmp: Path, version: str, image: bytes) -> dict[str, str]:
    idf_bin = tmp / "idf" / "bin"
    idf_bin.mkdir(parents=True)
    (idf_bin / "idf.py").write_text(f"#!/bin/sh\necho 'ESP-IDF {version}'\n")
    (idf_bin / "idf.py").chmod(0o755)
    (tmp / "idf" / "export.sh").write_text(f'export PATH="{idf_bin}:$PATH"\n')
    port = tmp / "micropython" / "ports" / "esp32"
    port.mkdir(parents=True)
    (tmp / "image.bin").write_bytes(image)
    recipe = [
        "mkdir -p $(BUILD)/bootloader $(BUILD)/partition_table",
        f"cp {tmp / 'image.bin'} $(BUILD)/micropython.bin",
        "echo merged > $(BUILD)/firmware.bin",
        "echo sdkconfig > $(BUILD)/sdkconfig",
        "echo bootloader > $(BUILD)/bootloader/bootloader.bin",
        "echo table > $(BUILD)/partition_table/partition-table.bin",
        "echo 'BOARD_DIR=$(BOARD_DIR) BUILD=$(BUILD) BOARD=$(origin BOARD)' > $(BUILD)/make.log",
    ]
    (port / "Makefile").write_text("all:\n" + "".join(f"\t{r}\n" for r in recipe) + "submodules:\n\t@echo submodules\n")
    mpy_cross = tmp / "micropython" / "mpy-cross" / "build" / "mpy-cross"
    mpy_cross.parent.mkdir(parents=True)
    mpy_cross.write_text("#!/bin/sh\n")
    mpy_cross.chmod(0o755)
    env = env_without_toolchain()
    env.update(IDF_PATH=str(tmp / "idf"), MICROPY_DIR=str(tmp / "micropython"), FOTA_BUILD_DIR=str(tmp / "out"))
    return env


def app_image_for(name: str) -> bytes:
    m = meta(name)
    desc = app_desc(version="", project_name="micropython")
    return build_app_image([Segment(DROM_BASE, desc + b"\x00" * 4096)], chip_id=m["chip_id"], flash_size=m["flash_size"])


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("name", REAL_BOARDS)
def test_build_script_builds_with_board_dir_and_collects_the_app_image(name, tmp_path):
    env = fake_toolchain(tmp_path, "v5.5.1", app_image_for(name))
    env.update(BOARD="leaked", MAKEFLAGS="BOARD=leaked")  # as from `make firmware BOARD=...`
    proc = run_build_script(name, env)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / name
    assert (out / "micropython.bin").read_bytes() == app_image_for(name)
    for artefact in ("firmware.bin", "bootloader.bin", "partition-table.bin", "sdkconfig"):
        assert (out / artefact).exists(), artefact
    log = (out / "idf" / "make.log").read_text().split()
    assert log == [f"BOARD_DIR={boards.BOARDS_DIR / name}", f"BUILD={out / 'idf'}", "BOARD=undefined"]
    if (ROOT / ".venv" / "bin" / "fota").exists():  # the script checks the image against the board
        assert (out / "micropython.app-bin").read_bytes() == app_image_for(name)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("version", ["v5.1.4", "v6.0"])
def test_build_script_refuses_esp_idf_micropython_does_not_support(version, tmp_path):
    proc = run_build_script("esp32_generic", fake_toolchain(tmp_path, version, app_image_for("esp32_generic")))
    assert proc.returncode == 2
    assert "supports v5.2 .. v5.5" in proc.stderr
    assert not (tmp_path / "out" / "esp32_generic" / "micropython.bin").exists()
