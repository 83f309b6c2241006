"""Virtual boards that run the update agent over MQTT, and a server to update them.

Boards are provisioned as `fota provision` does it: `ids` (the server's Identities) enrols the
board's id and its config.json gets the broker login and the report key; `broker` (a mosquitto
with auth, tests/brokers.py) then reloads its password and ACL files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from host_tools.server.service import Server, ServerConfig
from simkit import fw_image, new_board

# main.py of a board on the network: what `fota provision` writes (fota.device reads config.json).
MAIN = """
import app
from fota import device
print("APP", app.VERSION)
device.run(app)
"""


def mqtt_board(home: Path, name: str, *, host: str, port: int, image: bytes | None = None, ids=None, broker=None,
               **net) -> object:
    board = new_board(home, name, image=image or fw_image("1.0.0"), files={"main.py": MAIN})
    scheme = "mqtts" if net.get("ca") else "mqtt"
    config = {"board": "sim", "chip_id": 0, "hw_rev": net.pop("hw_rev", "A"), "server": f"{scheme}://{host}:{port}",
              "self_test_ms": 3000, "chunk_timeout_ms": 1000, "keepalive": 10, **net}
    if ids is not None:
        config |= ids.enroll(device_id(board)).device_config()
        if broker is not None and hasattr(broker, "sync"):
            broker.sync(ids)
    board.write_file("config.json", json.dumps(config))
    return board


def device_id(board) -> str:
    return board.config["uid"]


def start_server(data_dir: Path, broker_url: str | None, broker=None) -> Server:
    """`fota serve` in-process; with a mosquitto `broker` (auth), its files get the server's login first."""
    server = Server(ServerConfig(data_dir, broker_url=broker_url))
    if broker is not None and hasattr(broker, "sync"):
        server.identities.server_credentials()
        broker.sync(server.identities)
    server.start()
    return server


def wait_until(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_final(server: Server, offer_id: int, timeout: float = 90):
    from host_tools.server.registry import FINAL

    return wait_until(lambda: (o := server.registry.offer(offer_id)) and o.status in FINAL and o, timeout,
                      f"offer {offer_id} to finish")
