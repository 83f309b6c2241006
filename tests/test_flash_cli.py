"""`fota flash`: clear errors for a missing port, a wrong chip, an image that does not fit."""

from __future__ import annotations

import pytest

from host_tools.cli import main
from host_tools.device.flashing import detected_chip, flash_image
from host_tools.esp import boards
from host_tools.esp.app_image import Segment, build_app_image
from simkit import app_image

pytestmark = pytest.mark.host


def test_missing_port_is_a_clear_error(tmp_path, capsys):
    image = tmp_path / "app.bin"
    image.write_bytes(app_image("1.0.0"))
    assert main(["flash", str(image), "--port", "/dev/ttyNOPE0"]) == 1
    err = capsys.readouterr().err
    assert "no serial port /dev/ttyNOPE0" in err and "plugged in" in err


def test_image_for_another_chip_is_refused_before_touching_the_port(tmp_path):
    s3 = tmp_path / "s3.bin"
    s3.write_bytes(build_app_image([Segment(0x3F400020, app_image("1.0.0")[0x20:0x120])], chip_id=9))
    with pytest.raises(Exception, match="chip ID"):
        flash_image("/dev/ttyNOPE0", s3, board="esp32_generic")


def test_image_that_does_not_fit_is_refused(tmp_path):
    board = boards.load("esp32_generic")
    big = tmp_path / "big.bin"
    desc = app_image("1.0.0")[0x20:0x120]
    big.write_bytes(build_app_image([Segment(0x3F400020, desc + b"\x00" * board.slot_size)]))
    with pytest.raises(Exception, match="(holds|exceeds|beyond)"):
        flash_image("/dev/ttyNOPE0", big, board="esp32_generic")


@pytest.mark.parametrize(
    "text, chip",
    [
        ("Detecting chip type... ESP32-S3\nChip type: ESP32-S3 (QFN56) (revision v0.2)", "esp32s3"),
        ("Detecting chip type... ESP32\nChip is ESP32-D0WD-V3 (revision v3.1)", "esp32"),
        ("Chip type: ESP32-C3 (QFN32) (revision v0.4)", "esp32c3"),
        ("A fatal error occurred: Failed to connect to Espressif device", None),
    ],
)
def test_chip_detection_from_esptool_output(text, chip):
    assert detected_chip(text) == chip


def test_flash_to_a_virtual_board(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "sim", "create", "v1"]) == 0
    image = tmp_path / "app.bin"
    image.write_bytes(app_image("1.2.0"))
    assert main(["--home", str(tmp_path), "flash", str(image), "--port", "sim:v1"]) == 0
    out = capsys.readouterr().out  # esptool's own output, against the board in download mode on its pty
    assert "Chip was NOT reset" in out and "Hash of data verified." in out and "Flash memory region erased" in out
    assert "flashed app.bin to ota_0 at 0x10000 on sim:v1 (download mode, /dev/pts/" in out
    assert main(["--home", str(tmp_path), "flash", str(image), "--port", "sim:nosuch"]) == 1
    assert "no virtual board" in capsys.readouterr().err


def test_esptool_output_is_passed_through_as_it_comes(tmp_path):
    """`fota flash` copies esptool's own output (its progress bar) to the terminal and still keeps it for errors."""
    import io

    from host_tools.device.flashing import esptool_cmd, run_passing_through

    seen = io.StringIO()
    code, out = run_passing_through([*esptool_cmd(), "version"], seen)
    assert code == 0 and "esptool" in out.lower()
    assert seen.getvalue() == out
