"""`fota serve`: the update server on one machine, with everything it needs.

The data directory holds the registry (SQLite), the package store, and
`serve.json`, which tells other `fota` commands which broker the running server
uses. With no broker URL the server starts an embedded amqtt broker on loopback.
With `coap_port` set, the same registry and packages are also served over CoAP
(docs/COAP.md) beside MQTT.

    server = Server(ServerConfig(data_dir=Path("~/.fota/server")))
    server.start()
    server.deploy(Path("app.fota").read_bytes(), ["a1b2c3"])
    server.stop()

Several workers share one PostgreSQL registry and one external broker (docs/DEPLOY.md): each has
its own data directory and a `worker` name (its MQTT client id is fota-server-<name>); packages,
campaigns and reports go through the database (host_tools/server/workers.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import FotaError, UnavailableError
from host_tools.image.keys import PublicKey
from host_tools.server.broker import EmbeddedBroker
from host_tools.server.identity import Identities
from host_tools.server.mqtt_service import MqttService
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry
from host_tools.server.workers import CampaignLock, SharedPackageStore


class ServiceDied(FotaError):
    """A service thread of the server ended; the process exits non-zero."""

    exit_code = 70  # EX_SOFTWARE


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
    broker_host: str = "127.0.0.1"  # where the embedded broker listens; not loopback: broker_tls is required
    broker_tls: tuple[str, str] | None = None  # (certfile, keyfile) of the embedded broker (mqtts://)
    coap_port: int | None = None  # None: no CoAP; 0: a free UDP port (docs/COAP.md)
    coap_host: str = "127.0.0.1"
    tick_s: float = 1.0  # how often campaigns move on
    database: str | None = None  # postgresql://...; None: SQLite in the data directory
    api_port: int | None = None  # None: no HTTP API and console; 0: a free TCP port (host_tools/server/api/)
    api_host: str = "127.0.0.1"
    webhooks: tuple[str, ...] = ()  # URLs that get campaign events (paused by a gate, completed, aborted)
    trusted_keys: tuple[Path, ...] = ()  # public keys packages must be signed by (none: structure and digests only)
    worker: str | None = None  # one of several workers by this name: needs `database` (PostgreSQL) and `broker_url`


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        if config.worker is not None and not (config.broker_url and (config.database or "").startswith(("postgresql:", "postgres:"))):
            raise FotaError(f"worker {config.worker!r} needs a PostgreSQL registry and an external broker",
                            hint="fota serve --worker NAME --database postgresql://... --broker mqtt://HOST:PORT (docs/DEPLOY.md)")
        self.registry = Registry(config.database or config.data_dir / "registry.sqlite")
        trusted = [*config.trusted_keys, *sorted((config.data_dir / "trusted").glob("*.pub"))]  # the API's trusted keys too
        keys = [PublicKey.load(p) for p in trusted]
        if self.registry.db.kind == "postgresql":  # other workers may serve what this one stores, and the reverse
            self.store: PackageStore = SharedPackageStore(config.data_dir / "packages", self.registry.db, trusted=keys)
        else:
            self.store = PackageStore(config.data_dir / "packages", trusted=keys)
        self.identities = Identities(self.registry, config.prefix, shared=config.worker is not None)  # secrets, logins, reports
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttService | None = None
        self.coap = None  # CoapService when config.coap_port is not None
        self.campaigns = None
        self.api = None  # ApiService when config.api_port is not None
        self.campaign_lock = CampaignLock(self.registry.db)  # campaigns move one at a time, in all workers
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def broker_url(self) -> str:
        return self.config.broker_url or (self.broker.url if self.broker else "")

    def start(self) -> None:
        if self.config.broker_url is None:
            self.broker = EmbeddedBroker(self.identities, host=self.config.broker_host, port=self.config.broker_port,
                                         tls=self.config.broker_tls)
            self.broker.start()
        worker = self.config.worker
        self.mqtt = MqttService(self.registry, self.store, self.broker_url, prefix=self.config.prefix,
                                ca_file=self.config.broker_ca, identities=self.identities,
                                client_id=f"fota-server-{worker}" if worker else "fota-server", share="fota" if worker else None)
        self.mqtt.start()
        self.mqtt.republish_offers()  # an embedded broker lost the retained offers when the server stopped
        if self.config.coap_port is not None:
            from host_tools.server.coap_service import CoapService, RegistryBackend

            backend = RegistryBackend(self.registry, self.store, on_final=self.mqtt.settle_offer, identities=self.identities)
            self.coap = CoapService(backend, host=self.config.coap_host, port=self.config.coap_port, prefix=self.config.prefix)
            self.coap.start()
        from host_tools.fleet.campaign import CampaignRunner

        self.campaigns = CampaignRunner(self.registry, offer=self.mqtt.offer, offer_many=self.mqtt.offer_many,
                                        withdraw=self.mqtt.clear_offer,
                                        republish=self.mqtt.republish_offer,
                                        manifest_of=lambda pid: self.store.load(pid)[0].manifest)
        self._ticker = threading.Thread(target=self._tick_campaigns, name="campaigns", daemon=True)
        self._ticker.start()
        info = {"broker": self.broker_url, "prefix": self.config.prefix, "pid": os.getpid(), "ca": self.config.broker_ca,
                "database": self.config.database}
        if self.coap:
            info["coap"] = self.coap.url
        if self.config.api_port is not None:
            from host_tools.server.api import ApiService

            self.api = ApiService(self, host=self.config.api_host, port=self.config.api_port)
            self.api.start()
            info["api"] = self.api.url
        (self.config.data_dir / "serve.json").write_text(json.dumps(info) + "\n")

    def _tick_campaigns(self) -> None:
        while not self._stopping.wait(self.config.tick_s):
            try:
                with self.campaign_lock.attempt() as mine:  # another worker making this tick: skip it
                    if mine:
                        self.campaigns.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again; logged, never the end of the ticker
                logging.getLogger("fota.server").exception("campaign tick failed")

    def dead(self) -> list[str]:
        """The services whose thread ended while the server runs (then the process should end, non-zero)."""
        out = []
        if self.mqtt is not None and not self.mqtt.alive():
            out.append("MQTT service")
        if self.coap is not None and not self.coap.alive():
            out.append("CoAP service")
        if self._ticker is not None and not self._ticker.is_alive() and not self._stopping.is_set():
            out.append("campaign ticker")
        if self.broker is not None and hasattr(self.broker, "alive") and not self.broker.alive():
            out.append("embedded broker")
        return out

    def supervise(self, interval: float = 1.0) -> None:
        """Return never while every service runs; raise ServiceDied when one has died (a supervisor restarts us)."""
        while True:
            time.sleep(interval)
            dead = self.dead()
            if dead:
                raise ServiceDied(f"fota serve: {', '.join(dead)} stopped; exiting so that a supervisor restarts the server")

    def stop(self) -> None:
        self._stopping.set()
        if self.api:
            self.api.stop()
        if self._ticker:
            self._ticker.join(10)
        if self.coap:
            self.coap.stop()
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

    def push_key_list(self, raw: bytes, devices: list[str]) -> int:
        """Send a root-signed key list to devices without a firmware update (retained: offline devices get it
        later); returns its version."""
        version = key_list_version(raw)
        for d in devices:
            self.mqtt.push_key_list(d, raw, version)
        return version

    def deploy(self, data: bytes, devices: list[str], *, chunk: int = 4096, policy: str = "auto", force: bool = False) -> list[int]:
        """Offer a package to devices now (retained: offline devices get it when they connect); without `force`,
        not to devices its image rolled back on (docs/SECURITY.md)."""
        pid = self.add_package(data)
        return [self.mqtt.offer(d, pid, chunk=chunk, policy=policy) for d in devices
                if force or self.registry.rolled_back_reason(d, pid) is None]


def key_list_version(raw: bytes) -> int:
    """The version of a key list about to be pushed (KeyListError if it is not one; devices check the root signature)."""
    from host_tools.image.keylist import parse_key_list

    return parse_key_list(raw).version


def open_registry(data_dir: Path, database: str | None = None) -> Registry:
    """The registry a command should use: --database, else the running server's, else SQLite in data_dir."""
    if database is None and (data_dir / "serve.json").exists():
        database = json.loads((data_dir / "serve.json").read_text()).get("database")
    return Registry(database or data_dir / "registry.sqlite")


def running_server(data_dir: Path) -> dict:
    """What `serve.json` says about the running server, or an error that says how to start one."""
    path = data_dir / "serve.json"
    if not path.exists():
        raise UnavailableError(f"no fota server is running on {data_dir}",
                               hint="start one with: fota serve (or name a remote one with --server URL / $FOTA_SERVER)")
    return json.loads(path.read_text())
