"""`fota sim` commands end to end, as a user types them."""

from __future__ import annotations

import pytest

from host_tools.cli import main
from simkit import app_image

pytestmark = pytest.mark.fw


def test_sim_create_flash_run_status(tmp_path, capsys):
    home = ["--home", str(tmp_path)]
    image = tmp_path / "v1.bin"
    image.write_bytes(app_image("1.0.0"))
    assert main([*home, "sim", "create", "dev1", "--hw-rev", "B"]) == 0
    assert main([*home, "sim", "create", "dev1"]) == 1  # exists already
    assert main([*home, "sim", "flash", "dev1", str(image)]) == 0
    main_py = tmp_path / "main.py"
    main_py.write_text("import app\nprint('hello', app.VERSION)\n")
    assert main([*home, "sim", "fs", "put", "dev1", str(main_py)]) == 0
    assert main([*home, "sim", "fs", "ls", "dev1"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["boot.py", "main.py"]
    assert main([*home, "sim", "run", "dev1", "--until", "idle", "--timeout", "30"]) == 0
    assert "hello 1.0.0" in capsys.readouterr().out
    assert main([*home, "sim", "status", "dev1"]) == 0
    status = capsys.readouterr().out
    assert "[0] seq=1 state=VALID crc=ok  <- active" in status
    assert "ota_0: valid version=1.0.0" in status and "ota_1: invalid empty (erased)" in status
    assert main([*home, "sim", "repl", "dev1"]) == 1
    assert "not running" in capsys.readouterr().err
    assert main([*home, "sim", "flash", "dev1", str(tmp_path / "missing.bin")]) == 4  # not found (docs/CLI.md)
    assert "no such image file" in capsys.readouterr().err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 64)
    assert main([*home, "sim", "flash", "dev1", str(bad)]) == 1
    assert "not an ESP app image" in capsys.readouterr().err


def test_sim_run_with_a_power_cut(tmp_path, capsys):
    home = ["--home", str(tmp_path)]
    image = tmp_path / "v1.bin"
    image.write_bytes(app_image("1.0.0"))
    main([*home, "sim", "create", "pc"])
    main([*home, "sim", "flash", "pc", str(image)])
    # the first boot's bootloader writes otadata (erase = op 1, write = op 2): cut before op 2
    assert main([*home, "sim", "run", "pc", "--cut-before", "2", "--until", "halt", "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert "power lost before flash operation 2" in out
    main([*home, "sim", "status", "pc"])
    assert "[0] seq=blank" in capsys.readouterr().out  # the erase landed, the write did not


def test_sim_run_download_waits_in_the_rom_loader(tmp_path, capsys):
    home = ["--home", str(tmp_path)]
    main([*home, "sim", "create", "dl"])
    assert main([*home, "sim", "run", "dl", "--download", "--timeout", "1"]) == 0
    out = capsys.readouterr().out
    assert "waiting for download" in out and "esptool --port rfc2217://127.0.0.1:" in out
    assert "Type \"help()\"" not in out and "I boot:" not in out  # no bootloader, no app
