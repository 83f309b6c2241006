"""The device code as a MicroPython mip package, and the stock-firmware path it opens (issue 16).

firmware/package.json (scripts/make_mip.py, `make mip`) must list every module and be up to date;
real mpremote installs it onto a virtual board; and a board flashed with a stock image (no frozen
agent: `fota build --no-agent`, the virtual twin of MicroPython's published ESP32_GENERIC-OTA
firmware) runs the mip-installed agent and takes an update signed by us, end to end through the CLI,
a real `fota serve` and a real `fota sim run`.
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

from conftest import FIRMWARE, MICROPYTHON, NO_MICROPYTHON, ROOT
from host_tools.image.build import BuildSpec, build_image
from host_tools.image.mip import build_mpy_package, package_json, render, sources
from host_tools.sim.runtime import BoardRun
from simkit import new_board

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
FOTA = [sys.executable, "-m", "host_tools.cli"]
needs_micropython = pytest.mark.skipif(MICROPYTHON is None, reason=NO_MICROPYTHON)
# A stock image keeps the agent's bytecode in the heap (frozen firmware keeps it in flash): ~80 KB
# measured here, so the stock virtual board gets a larger heap than the frozen boards' 128k.
STOCK_HEAP = "192k"


def mpremote(tty: str | Path, *args: str) -> str:
    proc = subprocess.run([MPREMOTE, "connect", str(tty), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.host
def test_package_json_lists_every_firmware_module_and_is_up_to_date():
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_mip.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    package = json.loads((FIRMWARE / "package.json").read_text())
    on_disk = sorted(p.relative_to(FIRMWARE).as_posix() for p in (FIRMWARE / "fota").rglob("*.py"))
    assert [src for _, src in package["urls"]] == on_disk
    assert all(dest == src for dest, src in package["urls"])
    assert package["deps"] == [] and package["version"]
    assert (FIRMWARE / "package.json").read_text() == render(package_json(FIRMWARE, package["version"]))


@pytest.mark.host
def test_the_precompiled_package_has_one_mpy_per_module(tmp_path):
    package = json.loads(build_mpy_package(FIRMWARE, tmp_path, "0.0.1").read_text())
    assert [src for _, src in package["urls"]] == [s[:-3] + ".mpy" for s in sources(FIRMWARE)]
    for _, src in package["urls"]:
        assert (tmp_path / src).read_bytes()[:2] == b"M\x06"  # .mpy v6, no architecture: loads on any port
        assert (tmp_path / src).read_bytes()[2] >> 2 == 0


@pytest.mark.fw
@needs_micropython
@pytest.mark.timeout(180)
def test_mpremote_mip_installs_the_agent_on_a_stock_virtual_board(tmp_path):
    stock = build_image(BuildSpec(board="sim", version="v1.28.0", agent=False))
    board = new_board(tmp_path, "mip", image=stock)
    with BoardRun(board) as run:
        run.wait_idle()
        assert "No module named" in mpremote(board.repl_link, "exec", "try:\n import fota\nexcept ImportError as e:\n print('No module named', e)")
        out = mpremote(board.repl_link, "mip", "install", "--target", "/lib", str(FIRMWARE / "package.json"))
        assert "Done" in out
        got = mpremote(board.repl_link, "exec", "import fota.errors, fota.agent; print(fota.agent.__file__, fota.errors.name(fota.errors.FAULT))")
    assert got.split()[0] == "/lib/fota/agent.py"
    for name in sources(FIRMWARE):
        assert board.read_file(f"lib/{name}") == (FIRMWARE / name).read_bytes(), name


class Cli:
    """`fota` as an operator runs it: FOTA_HOME in the test's directory, background services in their own sessions."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = os.environ | {"FOTA_HOME": str(tmp / "home")}
        for name in ("FOTA_SERVER", "FOTA_TOKEN", "FOTA_DEBUG"):
            self.env.pop(name, None)
        self.background: list[subprocess.Popen] = []

    def __call__(self, *args: str) -> str:
        proc = subprocess.run([*FOTA, *args], capture_output=True, text=True, timeout=180, cwd=self.tmp, env=self.env)
        assert proc.returncode == 0, f"fota {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def start(self, log: str, *args: str) -> None:
        out = open(self.tmp / log, "w")
        self.background.append(subprocess.Popen([*FOTA, *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                                                env=self.env, start_new_session=True))
        out.close()

    def wait(self, probe, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = probe()
            except AssertionError:
                got = None
            if got:
                return got
            time.sleep(0.3)
        logs = "".join(f"\n--- {p.name}:\n{p.read_text()[-3000:]}" for p in self.tmp.glob("*.log"))
        raise AssertionError(f"no {what} after {timeout} s{logs}")

    def stop(self) -> None:
        for proc in reversed(self.background):
            proc.send_signal(signal.SIGTERM)
        for proc in self.background:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.fw
@needs_micropython
@pytest.mark.timeout(300)
def test_stock_firmware_with_the_mip_installed_agent_takes_an_update_signed_by_us(tmp_path):
    fota = Cli(tmp_path)
    mip = build_mpy_package(FIRMWARE, tmp_path / "mip", "0.0.1")  # what `make mip` writes to build/mip/
    fota("keygen", "keys/release.pem")
    fota("init", "app", "--stock")
    fota("build", "--board", "sim", "--no-agent", "--version", "v1.28.0", "-o", "stock.bin")  # "esptool write" of the published image
    fota("sim", "create", "st1")
    config = tmp_path / "home" / "sim" / "st1" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"heap": STOCK_HEAP}))
    fota("sim", "flash", "st1", "stock.bin")
    try:
        fota.start("serve.log", "serve")
        fota.start("st1.log", "sim", "run", "st1")
        tty = fota.wait(lambda: fota("sim", "repl", "st1").strip(), "REPL")
        fota.wait(lambda: fota("devices") is not None, "fota serve")
        assert "Done" in mpremote(tty, "mip", "install", "--target", "/lib", str(mip))
        mpremote(tty, "fs", "cp", str(tmp_path / "app" / "app.py"), ":app.py")
        fota("provision", "--port", "sim:st1", "--device-id", "st1", "--trust", "keys/release.pub")

        def version() -> str | None:
            rows = {d["id"]: d for d in json.loads(fota("devices", "--json"))}
            return rows["st1"]["version"] if "st1" in rows else None

        assert fota.wait(version, "first report") == "v1.28.0"  # the running image's own version
        fota("build", "--board", "sim", "--no-agent", "--version", "v1.28.1", "-o", "next.bin")  # the next MicroPython release
        fota("sign", "next.bin", "--key", "keys/release.pem", "--sequence", "1", "--hw-rev", "A", "-o", "next.fota")
        out = fota("deploy", "next.fota", "--device", "st1", "--follow", "--timeout", "180")
        assert "st1: SUCCEEDED" in out, out
        assert fota.wait(lambda: version() == "v1.28.1", "v1.28.1 reported")
        where = mpremote(tty, "exec", "import fota, esp32; print(fota.__file__, esp32.Partition(esp32.Partition.RUNNING).info()[4])")
    finally:
        fota.stop()
    assert where.split() == ["/lib/fota/__init__.mpy", "ota_1"]  # the agent from the filesystem; the new image committed
    assert "fota: running v1.28.1" in (tmp_path / "st1.log").read_text()
