"""`fota serve`: the update server on one machine, with everything it needs.

The data directory holds the registry (SQLite), the package store, and
`serve.json`, which tells other `fota` commands which broker the running server
uses. With no broker URL the server starts an embedded amqtt broker on loopback.

    server = Server(ServerConfig(data_dir=Path("~/.fota/server")))
    server.start()
    server.deploy(Path("app.fota").read_bytes(), ["a1b2c3"])
    server.stop()
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.server.broker import EmbeddedBroker
from host_tools.server.mqtt_service import MqttService
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry


def default_data_dir(home: str | os.PathLike | None = None) -> Path:
    base = Path(home or os.environ.get("FOTA_HOME") or Path.home() / ".fota")
    return base / "server"


@dataclass
class ServerConfig:
    data_dir: Path
    broker_url: str | None = None  # None: embedded amqtt on loopback
    prefix: str = "fota"
    broker_port: int = 0
    broker_ca: str | None = None  # CA file for an mqtts:// broker
    tick_s: float = 1.0  # how often campaigns move on


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry = Registry(config.data_dir / "registry.sqlite")
        self.store = PackageStore(config.data_dir / "packages")
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttService | None = None
        self.campaigns = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def broker_url(self) -> str:
        return self.config.broker_url or (self.broker.url if self.broker else "")

    def start(self) -> None:
        if self.config.broker_url is None:
            self.broker = EmbeddedBroker(port=self.config.broker_port)
            self.broker.start()
        self.mqtt = MqttService(self.registry, self.store, self.broker_url, prefix=self.config.prefix,
                                ca_file=self.config.broker_ca)
        self.mqtt.start()
        info = {"broker": self.broker_url, "prefix": self.config.prefix, "pid": os.getpid(), "ca": self.config.broker_ca}
        (self.config.data_dir / "serve.json").write_text(json.dumps(info) + "\n")
        from host_tools.fleet.campaign import CampaignRunner

        self.campaigns = CampaignRunner(self.registry, offer=self.mqtt.offer, withdraw=self.mqtt.clear_offer)
        self._ticker = threading.Thread(target=self._tick_campaigns, name="campaigns", daemon=True)
        self._ticker.start()

    def _tick_campaigns(self) -> None:
        while not self._stopping.wait(self.config.tick_s):
            self.campaigns.tick()

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker:
            self._ticker.join(10)
        if self.mqtt:
            self.mqtt.stop()
        if self.broker:
            self.broker.stop()
        (self.config.data_dir / "serve.json").unlink(missing_ok=True)
        self.registry.close()

    def add_package(self, data: bytes) -> str:
        pid, package = self.store.add(data)
        self.registry.add_package(pid, str(self.store.path(pid)), package.manifest)
        return pid

    def deploy(self, data: bytes, devices: list[str], *, chunk: int = 4096, policy: str = "auto") -> list[int]:
        """Offer a package to devices now (retained: offline devices get it when they connect)."""
        pid = self.add_package(data)
        return [self.mqtt.offer(d, pid, chunk=chunk, policy=policy) for d in devices]


def running_server(data_dir: Path) -> dict:
    """What `serve.json` says about the running server, or an error that says how to start one."""
    path = data_dir / "serve.json"
    if not path.exists():
        raise FotaError(f"no fota server is running on {data_dir}", hint="start one with: fota serve (or give --broker)")
    return json.loads(path.read_text())
