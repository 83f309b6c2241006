"""Virtual boards that run the update agent over CoAP, and servers (direct or a gateway) to update them."""

from __future__ import annotations

import json
from pathlib import Path

from host_tools.server.service import Server, ServerConfig
from simkit import fw_image, new_board

# main.py of a CoAP board: the agent first (confirm or roll back), then the link. Short CoAP
# timeouts (net.json) keep lossy tests fast; the defaults are RFC 7252's.
MAIN = r"""
import app, json, machine, time
from fota.coap.client import CoapClient
from fota.agent import Agent, Identity
from fota.link.coap import CoapLink
import trusted_keys

net = json.loads(open("net.json").read())
dev = machine.unique_id().hex()

from fota.clock import unix_now as clock  # Unix time once set; None before (any epoch)

agent = Agent(Identity("sim", 0, net.get("hw_rev", "A"), app.VERSION), trusted_keys.KEYS, clock=clock,
              self_test_ms=net.get("self_test_ms", 3000))
agent.add_check("app", app.self_test)
window = net.get("window", 1)
qblock = net.get("qblock", False)  # Q-Block2 bursts: one exchange slot (offer, reports), a read buffer of rx_blocks
client = CoapClient(net["host"], net["port"], slots=1 if qblock else window, ack_timeout_ms=net.get("ack_timeout_ms", 2000),
                    max_retransmit=net.get("max_retransmit", 4), rx_blocks=net.get("rx_blocks", window if qblock else 0))
link = CoapLink(agent, client, dev, window=window, poll_ms=net.get("poll_ms", 5000), qblock=qblock,
                max_failures=net.get("max_failures", 4), retry_base_ms=net.get("retry_base_ms", 2000))
agent.reporter = link.report
agent.boot()
if net.get("key"):  # the report key `fota provision` gives the device (docs/SECURITY.md); after boot() like
    from fota.link.auth import Signer  # fota.device: the boot checks run in the emptiest heap
    link.signer = Signer(bytes.fromhex(net["key"]), dev)
print("APP", app.VERSION)
link.run()
"""

FAST = {"ack_timeout_ms": 150, "poll_ms": 300, "retry_base_ms": 300}  # loopback: answers come in ~1 ms


def coap_board(home: Path, name: str, *, port: int, host: str = "127.0.0.1", image: bytes | None = None, ids=None,
               **net) -> object:
    """A CoAP board; `ids` (the server's Identities) enrols it and gives it its report key."""
    board = new_board(home, name, image=image or fw_image("1.0.0"), files={"main.py": MAIN})
    if ids is not None:
        net["key"] = ids.enroll(board.config["uid"]).key.hex()
    board.write_file("net.json", json.dumps({"host": host, "port": port, **FAST, **net}))
    return board


def start_server(data_dir: Path, *, coap_port: int = 0, broker_url: str | None = None) -> Server:
    """`fota serve` in-process: embedded amqtt broker (unless broker_url) and CoAP on a free port."""
    server = Server(ServerConfig(data_dir, broker_url=broker_url, coap_port=coap_port))
    server.start()
    return server
