"""Virtual boards that run the update agent over MQTT, and a server to update them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from host_tools.server.service import Server, ServerConfig
from simkit import fw_image, new_board

# main.py of a board on the network: the agent first (confirm or roll back), then the link.
MAIN = r"""
import app, json, machine, time
from mqtt.client import MQTTClient
from ota.agent import Agent, Identity
from ota.mqtt_link import MqttLink
import trusted_keys

net = json.loads(open("net.json").read())
dev = machine.unique_id().hex()

def clock():
    t = int(time.time())
    return t if t > 1600000000 else None

agent = Agent(Identity("sim", 0, net.get("hw_rev", "A"), app.VERSION), trusted_keys.KEYS, clock=clock,
              self_test_ms=net.get("self_test_ms", 3000))
agent.add_check("app", app.self_test)
ssl_ctx = None
if net.get("ca"):
    import ssl
    ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ssl_ctx.verify_mode = ssl.CERT_REQUIRED
    ssl_ctx.load_verify_locations(cadata=bytes.fromhex(net["ca"]))
client = MQTTClient(dev, net["host"], net["port"], keepalive=net.get("keepalive", 10), ssl=ssl_ctx)
link = MqttLink(agent, client, dev, chunk_timeout_ms=net.get("chunk_timeout_ms", 1000), window=net.get("window", 8))
agent.reporter = link.report
agent.boot()
print("APP", app.VERSION)
link.run()
"""


def mqtt_board(home: Path, name: str, *, host: str, port: int, image: bytes | None = None, **net) -> object:
    board = new_board(home, name, image=image or fw_image("1.0.0"), files={"main.py": MAIN})
    board.write_file("net.json", json.dumps({"host": host, "port": port, **net}))
    return board


def device_id(board) -> str:
    return board.config["uid"]


def start_server(data_dir: Path, broker_url: str | None) -> Server:
    server = Server(ServerConfig(data_dir, broker_url=broker_url))
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
