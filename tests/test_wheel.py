"""`pip install .` (not editable) gives a working fota: firmware/ and boards/ travel in the wheel (issue 16).

The wheel is built from a copy of the project's packaging inputs (the checkout's build/ stays untouched),
installed with --no-deps into a fresh venv outside the checkout whose dependencies come from the test
venv's site-packages (a .pth line: no download, pip's cache is not even needed), and then the installed
`fota` builds sim firmware, makes a virtual board and takes it through one update from fota serve.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from mqttkit import wait_until

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "host_tools", "firmware", "boards", "examples")
pytestmark = [pytest.mark.fw, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the fota wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for name in INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_data"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)],
                   check=True, timeout=180, capture_output=True)
    wheel = next((work / "dist").glob("fota-*.whl"))
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # the dependencies, never the checkout
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, timeout=120, capture_output=True)
    return env_dir / "bin"


def test_the_wheel_carries_firmware_and_boards(installed, tmp_path):
    code = "import host_tools, host_tools.resources as r; print(host_tools.__file__); print(r.path('firmware')); print(r.path('boards'))"
    out = subprocess.run([str(installed / "python"), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True)
    module, firmware, boards = out.stdout.split()
    assert str(ROOT) not in module and "_data" in firmware and "_data" in boards
    assert (Path(firmware) / "fota" / "agent.py").exists() and (Path(boards) / "sim" / "board.json").exists()


def test_installed_fota_builds_flashes_and_updates_a_virtual_board(installed, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FOTA_SERVER", "FOTA_TOKEN")} | {
        "FOTA_HOME": str(home), "PATH": os.pathsep.join([str(installed), str(Path(sys.executable).parent), os.environ["PATH"]])}
    # the dependencies' console scripts (micropython, mpremote) live beside the test venv's python

    def fota(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(installed / "fota"), *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)
        assert out.returncode == 0, f"fota {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    fota("keygen", "keys/release.pem")
    fota("init", "app")
    fota("build", "--board", "sim", "--app", "app", "--trust", "keys/release.pub", "-o", "v1.bin")
    (tmp_path / "app" / "app.py").write_text((tmp_path / "app" / "app.py").read_text().replace("1.0.0", "1.1.0"))
    fota("build", "--board", "sim", "--app", "app", "--trust", "keys/release.pub", "-o", "v2.bin")
    fota("sign", "v2.bin", "--key", "keys/release.pem", "--sequence", "2", "--hw-rev", "A", "-o", "v2.fota")
    fota("sim", "create", "w1")
    fota("sim", "flash", "w1", "v1.bin")
    procs = []
    try:
        log = open(tmp_path / "serve.log", "w")
        procs.append(subprocess.Popen([str(installed / "fota"), "serve", "--port", "0", "--api-port", "0", "--no-coap"],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        log.close()  # the child has its own copy
        info = wait_until(lambda: (home / "server" / "serve.json").exists() and json.loads((home / "server" / "serve.json").read_text()),
                     60, "serve.json")
        (tmp_path / "main.py").write_text("import app\nfrom fota import device\ndevice.run(app)\n")
        uid = json.loads((home / "sim" / "w1" / "config.json").read_text())["uid"]
        cred = json.loads(fota("device", "enroll", uid).stdout)  # the board's broker login and report key
        (tmp_path / "config.json").write_text(json.dumps({"board": "sim", "chip_id": 0, "hw_rev": "A", "server": info["broker"],
                                                          "self_test_ms": 5000, "chunk_timeout_ms": 1000, **cred}))
        for name in ("main.py", "config.json"):  # onto the board's flash filesystem (LittleFS in its vfs partition)
            fota("sim", "fs", "put", "w1", name)
        board_log = open(tmp_path / "board.log", "w")
        procs.append(subprocess.Popen([str(installed / "fota"), "sim", "run", "w1"], stdout=board_log, stderr=subprocess.STDOUT,
                                      env=env, cwd=tmp_path))
        board_log.close()
        rows = wait_until(lambda: [d for d in json.loads(fota("devices", "--json").stdout) if d["version"] == "1.0.0"], 60, "the board reports in")
        out = fota("deploy", "v2.fota", "--device", rows[0]["id"], "--follow", "--timeout", "90", timeout=120)
        assert "SUCCEEDED" in out.stdout
        assert json.loads(fota("devices", "--json").stdout)[0]["version"] == "1.1.0"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
