"""otadata, partition table and app-image formats, checked against ESP-IDF's numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.esp import boards, espidf
from host_tools.esp.app_image import ImageError, parse_app_image
from host_tools.esp.partition_table import PartitionTable, PartitionTableError
from simkit import app_image

pytestmark = pytest.mark.host
E = espidf.OtaEntry


def entry(seq, state=espidf.STATE_VALID, crc=None):
    return E(seq=seq, state=state, crc=espidf.ota_seq_crc(seq) if crc is None else crc)


def test_otadata_crc_matches_esp_idf():
    assert espidf.ota_seq_crc(1) == 0x4743989A
    assert espidf.ota_seq_crc(2) == 0x55F63774


def test_entry_roundtrip_is_32_bytes():
    raw = entry(7, espidf.STATE_PENDING_VERIFY).encode()
    assert len(raw) == 32 and raw[4:24] == b"\xff" * 20
    back = espidf.decode_entry(raw)
    assert (back.seq, back.state, back.crc) == (7, espidf.STATE_PENDING_VERIFY, espidf.ota_seq_crc(7))


@pytest.mark.parametrize(
    "entries, active",
    [
        ((entry(1), entry(2)), 1),  # larger seq wins
        ((entry(3), entry(2)), 0),
        ((entry(2), entry(2)), 0),  # tie: entry 0
        ((entry(1), entry(2, crc=0xDEADBEEF)), 0),  # bad CRC does not count
        ((entry(1), entry(2, espidf.STATE_ABORTED)), 0),
        ((entry(1), entry(2, espidf.STATE_INVALID)), 0),
        ((entry(1), E()), 0),  # blank
        ((E(), E()), -1),
        ((entry(5, espidf.STATE_NEW), entry(4)), 0),  # NEW counts as valid
        ((entry(1, crc=0), entry(2, crc=0)), -1),
    ],
)
def test_active_entry_selection(entries, active):
    assert espidf.active_index(list(entries)) == active


@pytest.mark.parametrize(
    "active_seq, slot, count, expected",
    [(1, 1, 2, 2), (2, 0, 2, 3), (2, 1, 2, 2), (1, 0, 2, 1), (3, 1, 2, 4), (5, 2, 3, 6), (1, 0, 3, 1)],
)
def test_set_boot_sequence_number(active_seq, slot, count, expected):
    seq = espidf.seq_for_slot(active_seq, slot, count)
    assert seq == expected and espidf.slot_of_seq(seq, count) == slot


def test_partition_csv_to_binary_and_back():
    board = boards.load("sim")
    blob = board.table.to_binary()
    assert len(blob) == 0xC00
    assert PartitionTable.from_binary(blob) == board.table
    names = [(p.name, p.offset, p.size) for p in board.table.partitions]
    assert names == [
        ("nvs", 0x9000, 0x4000),
        ("otadata", 0xD000, 0x2000),
        ("phy_init", 0xF000, 0x1000),
        ("ota_0", 0x10000, 0x180000),
        ("ota_1", 0x190000, 0x180000),
        ("vfs", 0x310000, 0xF0000),
    ]
    for slot in board.table.ota_slots():
        assert slot.offset % 0x10000 == 0


def test_binary_table_md5_is_checked():
    blob = bytearray(boards.load("sim").table.to_binary())
    blob[40] ^= 1
    with pytest.raises(PartitionTableError, match="MD5"):
        PartitionTable.from_binary(bytes(blob))


def test_csv_auto_offsets_and_misaligned_app():
    table = PartitionTable.from_csv("nvs,data,nvs,,0x4000\notadata,data,ota,,0x2000\nota_0,app,ota_0,,1M\n")
    assert [p.offset for p in table.partitions] == [0x9000, 0xD000, 0x10000]
    with pytest.raises(PartitionTableError, match="64 KiB"):
        PartitionTable.from_csv("ota_0,app,ota_0,0x11000,1M\n")


def test_built_image_is_valid_for_esptool(tmp_path: Path):
    image = app_image("1.2.3")
    parse_app_image(image, chip_id=0)
    path = tmp_path / "app.bin"
    path.write_bytes(image)
    esptool = Path(sys.executable).with_name("esptool")
    out = subprocess.run([str(esptool), "image-info", str(path)], capture_output=True, text=True, check=True).stdout
    assert "Checksum: " in out and "(valid)" in out.split("Checksum: ")[1].splitlines()[0]
    assert "Validation hash: " in out and "(valid)" in out.split("Validation hash: ")[1].splitlines()[0]
    assert "Chip ID: 0 (ESP32)" in out


@pytest.mark.parametrize(
    "offset, match",
    [(0, "magic"), (12, "chip ID"), (300, "checksum|hash"), (-1, "hash")],
)
def test_corrupt_images_are_refused(offset, match):
    image = bytearray(app_image("1.0.0"))
    image[offset] ^= 0x01 if offset else 0xFF
    with pytest.raises(ImageError, match=match):
        parse_app_image(bytes(image), chip_id=0)
