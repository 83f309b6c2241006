"""`fota provision`: write a board's configuration over its REPL (mpremote) and read it back.

Works the same on a USB board (`/dev/ttyUSB0`) and on a running virtual board
(`sim:NAME`, through its pty: `resolve=host_tools.sim.ports.resolve_port`, as the CLI does). Writes `config.json`, the `main.py` that starts
the update service (firmware/fota/device.py), and optionally `trusted_keys.py`. With `enroll`
(the server's Identities.enroll, as `fota provision` passes it) the device gets its own identity:
its broker login and report key go into `config.json` (docs/SECURITY.md).

    provision("/dev/ttyUSB0", DeviceConfig(board="esp32_generic", hw_rev="A",
              server="mqtt://192.168.1.10:1883", wifi=("lab", "secret")))
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.esp import boards
from host_tools.image.keys import PublicKey, trusted_keys_module

MAIN_PY = """import app
from fota import device
device.run(app)
"""


class ProvisionError(FotaError):
    """mpremote could not reach the board, or what was read back differs."""


@dataclass
class DeviceConfig:
    board: str
    hw_rev: str
    server: str
    device_id: str | None = None
    wifi: tuple[str, str] | None = None
    ca_der: bytes | None = None
    trusted: list[PublicKey] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        definition = boards.load(self.board)
        if not self.server.startswith(("mqtt://", "mqtts://")):
            raise ProvisionError(f"server {self.server!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
        cfg = {"board": definition.name, "chip_id": definition.chip_id, "hw_rev": self.hw_rev, "server": self.server}
        if self.hw_rev not in definition.hw_revs:
            raise ProvisionError(f"hardware revision {self.hw_rev!r} is not one of {definition.name}'s: {', '.join(definition.hw_revs)}")
        if self.device_id:
            cfg["device_id"] = self.device_id
        if self.wifi:
            cfg["wifi"] = {"ssid": self.wifi[0], "key": self.wifi[1]}
        if self.ca_der:
            cfg["ca"] = self.ca_der.hex()
        return cfg | self.extra


def serial_port(port: str) -> str:
    """A serial device path for mpremote; it has to exist."""
    if not Path(port).exists():
        raise ProvisionError(f"no serial port {port}", hint="is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*)")
    return port


def mpremote(device: str, *args: str, timeout: float = 60) -> str:
    cmd = [str(Path(sys.executable).with_name("mpremote")), "connect", device, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ProvisionError(f"mpremote {' '.join(args[:2])} on {device} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout


def read_unique_id(device: str) -> str:
    """The chip's `machine.unique_id()` in hex, the default device id."""
    return mpremote(device, "exec", "import machine; print(machine.unique_id().hex())").strip()


def provision(port: str, config: DeviceConfig, *, reset: bool = True, resolve: Callable[[str], str] = serial_port,
              enroll: Callable[[str], dict] | None = None) -> dict:
    """Write config.json, main.py (and trusted_keys.py), read config.json back, then reset.

    `resolve` turns the port name into what mpremote connects to (a virtual board's pty, say).
    `enroll(device_id)` gives the device its credentials (config entries: device_id, user, password, key)."""
    config.to_json()  # refuse a bad configuration before touching the board
    device = resolve(port)
    if enroll is not None:
        device_id = config.device_id or read_unique_id(device)
        config.extra = config.extra | enroll(device_id)
    cfg = config.to_json()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"config.json": json.dumps(cfg, indent=1), "main.py": MAIN_PY}
        if config.trusted:
            files["trusted_keys.py"] = trusted_keys_module(config.trusted)
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            mpremote(device, "fs", "cp", str(Path(tmp) / name), f":{name}")
    back = json.loads(mpremote(device, "fs", "cat", ":config.json"))
    if back != cfg:
        raise ProvisionError(f"config.json read back from {port} differs from what was written: {back}")
    if reset:
        mpremote(device, "reset")
    return back
