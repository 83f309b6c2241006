"""`fota provision` errors that an operator can act on."""

from __future__ import annotations

import pytest

from host_tools.cli import main

pytestmark = pytest.mark.host


def test_missing_port(capsys):
    assert main(["provision", "--port", "/dev/ttyNOPE1", "--hw-rev", "A", "--server", "mqtt://10.0.0.1:1883"]) == 1
    assert "no serial port /dev/ttyNOPE1" in capsys.readouterr().err


def test_virtual_board_not_running(tmp_path, capsys):
    main(["--home", str(tmp_path), "sim", "create", "p1"])
    assert main(["--home", str(tmp_path), "provision", "--port", "sim:p1", "--board", "sim", "--hw-rev", "A",
                 "--server", "mqtt://127.0.0.1:1883"]) == 1
    err = capsys.readouterr().err
    assert "not running" in err and "fota sim run p1" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hw-rev", "Q", "--server", "mqtt://127.0.0.1:1"], "hardware revision 'Q'"),
        (["--hw-rev", "A", "--server", "http://127.0.0.1:1"], "not mqtt://"),
    ],
)
def test_bad_configuration_is_refused_before_touching_the_board(tmp_path, capsys, args, message):
    main(["--home", str(tmp_path), "sim", "create", "p2"])
    (tmp_path / "sim" / "p2" / "tty").symlink_to("/dev/null")  # as if running: the config is checked first
    assert main(["--home", str(tmp_path), "provision", "--port", "sim:p2", "--board", "sim", *args]) == 1
    assert message in capsys.readouterr().err
