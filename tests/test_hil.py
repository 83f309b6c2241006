"""Hardware-in-the-loop: the whole update cycle on whatever --port names.

    pytest -m hil --port sim:hil1                 # a virtual board (CI runs this)
    pytest -m hil --port /dev/ttyUSB0 --hil-images DIR --hil-host 192.168.1.10 --hil-board esp32_generic

Driven only through `fota flash`, `fota provision` and mpremote, as a bench with a
USB board is: flash v1, provision, reset; the server offers v2 (committed after
its self-test), then a v3 whose self-test fails (rolled back to v2). For a real
board, DIR holds v1.bin, v2.bin, v3-bad.bin (app images built with `make
firmware`, v3's app.self_test() returning False) and release.pem, the key the
firmware trusts. docs/HIL.md says how to wire a runner.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.server.service import Server, ServerConfig
from mqttkit import wait_final, wait_until
from simkit import APP_TEMPLATE, session_signer

pytestmark = pytest.mark.hil
FOTA = [sys.executable, "-m", "host_tools.cli"]
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


class Bench:
    """One board under test, reached through its port as an operator would."""

    def __init__(self, port: str, tmp: Path, board: str, images: Path | None) -> None:
        self.port = port
        self.tmp = tmp
        self.board = board
        self.sim = port.startswith("sim:")
        self.env = dict(os.environ, FOTA_HOME=str(tmp / "home"))
        self.images = images or self._build_sim_images()
        self.runner: subprocess.Popen | None = None
        self._log = None

    def fota(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([*FOTA, *args], capture_output=True, text=True, timeout=120, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"fota {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def _build_sim_images(self) -> Path:
        out = self.tmp / "images"
        out.mkdir()
        key = out / "release.pem"
        key.write_bytes(session_signer().to_pem())
        (out / "release.pub").write_bytes(session_signer().public_key.to_pem())
        for name, version, behaviour in (("v1", "1.0.0", "ok"), ("v2", "2.0.0", "ok"), ("v3-bad", "3.0.0", "fail")):
            app = out / f"app-{name}"
            app.mkdir()
            (app / "app.py").write_text(APP_TEMPLATE.format(version=version, behaviour=behaviour))
            self.fota("build", "--board", "sim", "--app", str(app), "--version", version, "--trust", str(out / "release.pub"),
                      "-o", str(out / f"{name}.bin"))
        return out

    def flash_v1(self) -> None:
        if self.sim:
            self.fota("sim", "create", self.port[4:], "--hw-rev", "A", check=False)
        self.fota("flash", str(self.images / "v1.bin"), "--port", self.port, "--board", self.board)
        if self.sim:  # power on: the virtual board runs in its own process, like a board on USB
            self._log = open(self.tmp / "board.log", "w")
            self.runner = subprocess.Popen([*FOTA, "sim", "run", self.port[4:]], stdout=self._log, stderr=subprocess.STDOUT,
                                           env=self.env)
            wait_until(lambda: self.fota("sim", "repl", self.port[4:], check=False).strip(), 30, "the board's REPL")

    def device(self) -> str:
        return self.fota("sim", "repl", self.port[4:]).strip() if self.sim else self.port

    def mpremote(self, *args: str) -> str:
        proc = subprocess.run([MPREMOTE, "connect", self.device(), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def sign(self, name: str, version: str, sequence: int) -> bytes:
        out = self.tmp / f"{name}.fota"
        self.fota("sign", str(self.images / f"{name}.bin"), "--key", str(self.images / "release.pem"), "--board", self.board,
                  "--version", version, "--sequence", str(sequence), "--hw-rev", "A", "-o", str(out))
        return out.read_bytes()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.send_signal(signal.SIGTERM)
            self.runner.wait(timeout=30)
        if self._log is not None:
            self._log.close()


@pytest.fixture
def bench(request, tmp_path):
    port = request.config.getoption("--port")
    images = request.config.getoption("--hil-images")
    board = request.config.getoption("--hil-board") or ("sim" if port.startswith("sim:") else "esp32_generic")
    if not port.startswith("sim:") and not images:
        pytest.fail("a real board needs --hil-images DIR (v1.bin, v2.bin, v3-bad.bin, release.pem); see docs/HIL.md")
    b = Bench(port, tmp_path, board, Path(images) if images else None)
    yield b
    b.stop()


def test_update_cycle_commit_then_rollback(bench, request, tmp_path):
    host = request.config.getoption("--hil-host")
    server = Server(ServerConfig(tmp_path / "server", broker_url=None))
    server.config.broker_port = 0
    server.start()
    try:
        broker_port = int(server.broker_url.rsplit(":", 1)[1])
        bench.flash_v1()
        device_id = bench.mpremote("exec", "import machine; print(machine.unique_id().hex())").strip()
        bench.fota("provision", "--port", bench.port, "--board", bench.board, "--hw-rev", "A",
                   "--server", f"mqtt://{host}:{broker_port}", "--data", str(tmp_path / "server"))  # enrols it there
        state = wait_until(lambda: server.registry.device(device_id), 60, "the board's first state report")
        assert state["version"] == "1.0.0"

        good = server.deploy(bench.sign("v2", "2.0.0", 2), [device_id])[0]
        assert wait_final(server, good, 180).status == "SUCCEEDED"
        wait_until(lambda: server.registry.device(device_id)["version"] == "2.0.0", 60, "v2 reported")

        bad = server.deploy(bench.sign("v3-bad", "3.0.0", 3), [device_id])[0]
        offer = wait_final(server, bad, 180)
        assert offer.status == "ROLLED_BACK" and offer.code == 22, offer
        wait_until(lambda: server.registry.device(device_id)["version"] == "2.0.0", 60, "back on v2")
        time.sleep(0.5)
        slot = bench.mpremote("exec", "import esp32; print(esp32.Partition(esp32.Partition.RUNNING).info()[4])").strip()
        assert slot.endswith("ota_1")
        config = json.loads(bench.mpremote("fs", "cat", ":config.json"))
        assert config["hw_rev"] == "A"
    finally:
        server.stop()
