"""`fota serve` (embedded amqtt), `fota deploy`, `fota devices` as separate processes, as an operator runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from host_tools.sim.runtime import BoardRun
from mqttkit import device_id, mqtt_board, wait_until
from simkit import fw_image, fw_package

pytestmark = pytest.mark.fw
FOTA = [sys.executable, "-m", "host_tools.cli"]


def fota(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FOTA, *args], capture_output=True, text=True, timeout=60)


def test_serve_deploy_devices(tmp_path):
    data = tmp_path / "server"
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([*FOTA, "serve", "--data", str(data)], stdout=log, stderr=subprocess.STDOUT)
    try:
        info = wait_until(lambda: (data / "serve.json").exists() and json.loads((data / "serve.json").read_text()), 30, "serve.json")
        broker = urlparse(info["broker"])
        board = mqtt_board(tmp_path, "cli", host=broker.hostname, port=broker.port)
        # The broker takes logins only (docs/SECURITY.md): the operator enrols the board, as fota provision does.
        enrolled = fota("device", "enroll", device_id(board), "--data", str(data))
        assert enrolled.returncode == 0, enrolled.stderr
        config = json.loads(board.read_file("config.json").decode()) | json.loads(enrolled.stdout)
        board.write_file("config.json", json.dumps(config))
        package = tmp_path / "v2.fota"
        package.write_bytes(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2))
        with BoardRun(board):
            wait_until(lambda: device_id(board) in fota("devices", "--data", str(data)).stdout, 30, "device listed")
            out = fota("deploy", str(package), "--device", device_id(board), "--data", str(data))
            assert out.returncode == 0, out.stderr
            assert f"2.0.0 (seq 2) -> {device_id(board)}" in out.stdout

            def updated():
                rows = json.loads(fota("devices", "--data", str(data), "--json").stdout)
                return rows and rows[0]["version"] == "2.0.0" and rows[0]

            row = wait_until(updated, 60, "v2 in fota devices", interval=0.5)
        listing = fota("devices", "--data", str(data)).stdout
        assert ":SUCCEEDED" in listing and "2.0.0" in listing
        assert row["seq"] == 2
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
        log.close()
    assert not (data / "serve.json").exists()
    assert fota("deploy", str(package), "--device", "x", "--data", str(data)).returncode == 5  # EXIT_UNAVAILABLE


def test_deploy_without_a_server_says_how_to_start_one(tmp_path):
    out = fota("deploy", str(tmp_path / "x.fota"), "--device", "d1", "--data", str(tmp_path))
    assert out.returncode == 5 and "fota serve" in out.stderr
