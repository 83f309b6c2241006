"""Issue 12 end to end: a campaign on virtual boards completes honestly with a hostile peer on the network,
and across a `fota serve` killed with SIGKILL mid-campaign and restarted.

The hostile MQTT peer has valid credentials of its own (a device `mallory` enrolled like any other: the
broker's ACLs keep it under fota/mallory/, docs/SECURITY.md) and also tries the anonymous path; it sends
malformed, oversized and replayed messages on every topic it can reach, forged outcomes for the victims'
offers, and chunk requests for them. The hostile CoAP peer sends malformed datagrams to the server's port.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest

from host_tools import protocol
from host_tools.fleet.campaign import COMPLETED, CampaignSpec
from host_tools.server.identity import Identities
from host_tools.server.registry import Registry
from host_tools.server.service import Server, ServerConfig
from host_tools.sim.runtime import BoardRun
from mqttkit import device_id, mqtt_board, wait_until
from simkit import fw_image, fw_package

pytestmark = pytest.mark.fw

JUNK = [b"[]", b'{"event": "committed", "offer": 1e999}', b'{"board": {"x": 1}}', b"\xff\xfe", b"[" * 5000, b"{}" * 100,
        json.dumps({"event": "committed", "offer": [1]}).encode(), b"", b"\x00" * 70]


class HostilePeer(threading.Thread):
    """Sends junk until stopped: as `mallory` (its own valid login and report key) and anonymously."""

    def __init__(self, host: str, port: int, ids: Identities, victims: list[str], coap_port: int | None = None) -> None:
        super().__init__(daemon=True, name="hostile")
        self.host, self.port, self.victims, self.coap_port = host, port, victims, coap_port
        self.cred = ids.enroll("mallory")
        self.stop_flag = threading.Event()
        self.sent = 0
        self.rng = random.Random(12)

    def _client(self, user: str | None, password: str | None) -> paho.Client:
        # a device's client id is its login (the brokers refuse any other: no taking over a neighbour's session)
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=user or f"hostile-anon-{self.rng.random()}")
        if user:
            c.username_pw_set(user, password)
        c.connect_async(self.host, self.port)
        c.loop_start()
        return c

    def run(self) -> None:
        me, anon = self._client(self.cred.user, self.cred.password), self._client(None, None)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        counter, replay = 0, None
        try:
            while not self.stop_flag.wait(0.05):
                counter += 1
                body = self.rng.choice(JUNK)
                kind = self.rng.choice(("state", "events", "get"))
                sealed = protocol.seal_report(self.cred.key, "mallory", kind, counter, body) if kind != "get" else body
                replay = replay or sealed
                for c in (me, anon):
                    c.publish(f"fota/mallory/{kind}", sealed, qos=0)
                    c.publish("fota/mallory/state", replay, qos=0)  # a replayed report
                    c.publish("fota/mallory/get", protocol.encode_get(self.rng.randrange(1, 30), [0, 0, 4096]), qos=0)
                    victim = self.rng.choice(self.victims)
                    c.publish(f"fota/{victim}/events", json.dumps({"event": "failed", "offer": 1, "code": 5}), qos=0)
                    c.publish(f"fota/{victim}/offer", b"OFR1" + bytes(40), qos=0, retain=True)
                    c.publish(f"fota/{victim}/data", protocol.encode_data(1, 0, b"evil"), qos=0)
                if counter % 10 == 0:  # forged outcomes for the victims' offers, with mallory's own valid MAC
                    forged = json.dumps({"event": "committed", "offer": self.rng.randrange(1, 30)}).encode()
                    me.publish("fota/mallory/events", protocol.seal_report(self.cred.key, "mallory", "events", counter + 1, forged))
                    counter += 1
                if counter % 40 == 0:
                    me.publish("fota/mallory/state", b"{" + b" " * (1 << 20) + b"}", qos=0)  # oversized
                if self.coap_port:
                    for datagram in (bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 64))),
                                     bytes([0x44, 0x02, 0, 1, 1, 2, 3, 4]) + bytes(1143) + b"\xd0",
                                     bytes([0x40, 0x01, 0, 2]) + b"\xbd" + bytes(3),
                                     bytes([0x48, 0x02, 0, 3]) + bytes(8) + b"\xb4fota" + b"\xff" + b"x" * 60000):
                        udp.sendto(datagram, ("127.0.0.1", self.coap_port))
                self.sent += 1
        finally:
            for c in (me, anon):
                c.loop_stop()
                c.disconnect()
            udp.close()


def campaign_outcome(server: Server, name: str) -> dict[str, str]:
    return {row["device"]: row["status"] for row in server.registry.campaign_devices(name)}


@pytest.mark.parametrize("hostile", [False, True], ids=["quiet", "hostile"])
def test_a_campaign_completes_honestly_with_a_hostile_peer(tmp_path, hostile):
    server = Server(ServerConfig(tmp_path / "server", coap_port=0, tick_s=0.2))
    server.start()
    runs = []
    peer = None
    try:
        boards = [mqtt_board(tmp_path, f"b{i}", host=server.broker.host, port=server.broker.port, ids=server.identities)
                  for i in range(2)]
        runs = [BoardRun(b) for b in boards]
        for r in runs:
            r.start()
        ids = [device_id(b) for b in boards]
        wait_until(lambda: all(server.registry.device(d) and server.registry.device(d)["version"] for d in ids), 60, "boards report")
        if hostile:
            peer = HostilePeer(server.broker.host, server.broker.port, server.identities, ids, server.coap.port)
            peer.start()
            wait_until(lambda: peer.sent > 20, 30, "the attack under way")
        pid = server.add_package(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2))
        with server.campaign_lock:
            server.campaigns.create(CampaignSpec(name="r2", package=pid, max_in_flight=2, device_timeout_s=120,
                                                 groups=[], boards=["sim"]))
            server.campaigns.start("r2")
        wait_until(lambda: server.registry.campaign("r2")["status"] == COMPLETED, 150, "the campaign to complete")
        assert campaign_outcome(server, "r2") == {d: "SUCCEEDED" for d in ids}
        assert all(server.registry.device(d)["version"] == "2.0.0" for d in ids)
        assert server.dead() == []
        if hostile:
            assert server.mqtt.stats.total() + server.identities.rejected + server.registry.foreign_events > 0
            assert server.registry.device("mallory") is None or server.registry.device("mallory")["version"] is None
            committed = [e for e in server.registry.events() if e["event"] == "committed"]
            assert sorted(e["device"] for e in committed if e["device"] in ids) == sorted(ids)  # each once, by itself
    finally:
        if peer:
            peer.stop_flag.set()
            peer.join(10)
        for r in runs:
            r.stop()
        server.stop()


FOTA = [sys.executable, "-m", "host_tools.cli"]


def test_serve_killed_mid_campaign_restarts_and_every_device_finishes_once(tmp_path):
    data = tmp_path / "server"
    data.mkdir()
    port = int(subprocess.check_output([sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"]))
    registry = Registry(data / "registry.sqlite")
    ids = Identities(registry)
    boards = [mqtt_board(tmp_path, f"k{i}", host="127.0.0.1", port=port, ids=ids) for i in range(3)]
    devs = [device_id(b) for b in boards]
    env = dict(os.environ, FOTA_HOME=str(tmp_path / "home"))

    log = open(tmp_path / "serve.log", "a")  # noqa: SIM115 - both server processes write it; closed at the end

    def serve() -> subprocess.Popen:
        return subprocess.Popen([*FOTA, "serve", "--data", str(data), "--port", str(port), "--no-coap", "--no-api"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)

    def fota(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FOTA, *args, "--data", str(data)], capture_output=True, text=True, timeout=60, env=env)

    proc = serve()
    runs = [BoardRun(b) for b in boards]
    try:
        for r in runs:
            r.start()
        wait_until(lambda: all((d := registry.device(x)) and d["version"] for x in devs), 90, "boards report")
        runs[2].stop()  # k2 is off while its offer is made: it can only get it from the retained offer
        package = tmp_path / "v2.fota"
        package.write_bytes(fw_package(fw_image("2.0.0", pad=300_000), version="2.0.0", sequence=2))
        out = fota("campaign", "create", "r2", "--package", str(package), "--max-in-flight", "3", "--timeout", "300")
        assert out.returncode == 0, out.stderr
        assert fota("campaign", "start", "r2").returncode == 0
        wait_until(lambda: any(o.status == "DOWNLOADING" for o in registry.offers()), 60, "a download under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(1)
        proc = serve()
        wait_until(lambda: (data / "serve.json").exists(), 30, "the server back")
        runs[2] = BoardRun(boards[2])
        runs[2].start()
        try:
            wait_until(lambda: registry.campaign("r2")["status"] == COMPLETED, 240, "the campaign to complete after the restart")
        except AssertionError as exc:
            state = [(o.id, o.device, o.status, o.code, o.reason) for o in registry.offers()], registry.campaign_devices("r2")
            raise AssertionError(f"{exc}: {state} {[(e['device'], e['event'], e['body']) for e in registry.events()][-30:]}") from None
        rows = {r["device"]: r for r in registry.campaign_devices("r2")}
        assert {d: rows[d]["status"] for d in devs} == {d: "SUCCEEDED" for d in devs}
        committed = [e["device"] for e in registry.events() if e["event"] == "committed"]
        assert sorted(committed) == sorted(devs)  # each device's success counted once
        assert all(len([o for o in registry.offers(d) if o.status == "SUCCEEDED"]) == 1 for d in devs)
    finally:
        for r in runs:
            r.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        registry.close()
        log.close()
