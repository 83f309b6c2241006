"""Issue 13 at campaign level: forged and replayed reports during a running campaign move no gate and no outcome.

A real `fota serve` (embedded broker with logins, campaign ticker) and protocol-level devices
(host_tools/fleet/protofleet.py) that seal their reports with their own keys. While the campaign
runs, an attacker holding the server's broker login (it may publish anywhere) and device B's own
key replays and forges reports that, if believed, would finish the silent device's offer (the
campaign would complete), fail it (the error gate would pause the campaign) or undo the outcomes
that are already in.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from apikit import device_specs, wait_until
from host_tools import protocol
from host_tools.fleet.campaign import RUNNING, CampaignSpec, report
from host_tools.fleet.protodevice import enroll
from host_tools.fleet.protofleet import ProtoFleet
from host_tools.server.service import Server, ServerConfig
from simkit import app_image, fw_package

pytestmark = pytest.mark.host

A, B, C = "silent-a", "ok-b", "rollback-c"


class Spy:
    """A client with the server's broker login: records every report, and publishes whatever it likes."""

    def __init__(self, server: Server) -> None:
        cred = server.identities.server_credentials()
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spy-{time.time_ns()}")
        self.c.username_pw_set(cred.user, cred.password)
        self.c.on_message = self._on_message
        self.c.connect(server.broker.host, server.broker.port)
        self.c.subscribe("fota/+/events", 1)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def reports(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.got if t == topic]

    def pub(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_forged_and_replayed_reports_move_no_campaign_gate_and_no_outcome(tmp_path):
    server = Server(ServerConfig(tmp_path / "server", tick_s=0.2))
    server.start()
    specs = enroll(device_specs({A: ("silent", "A"), B: ("ok", "A"), C: ("fail-self-test", "A")}), server.identities)
    keys = {s.id: s.key for s in specs}
    spy = Spy(server)
    fleet = ProtoFleet(server.broker_url, specs, connect_rate=100)
    fleet.start()
    try:
        assert fleet.wait_connected(30)
        reg, ids = server.registry, server.identities
        wait_until(lambda: all(reg.device(d) for d in (A, B, C)), 30, "every device's first state")
        name = server.add_package(fw_package(app_image("2.0.0"), version="2.0.0", sequence=2))
        # the gate: 1 failure in 2 finished (0.5) keeps it running; one believed forgery tips it either way
        with server.campaign_lock:
            server.campaigns.create(CampaignSpec(name="c", package=name, max_in_flight=3, error_threshold=0.6,
                                                 min_sample=2, device_timeout_s=3600))
            server.campaigns.start("c")

        def statuses() -> dict[str, str]:
            return {r["device"]: r["status"] for r in reg.campaign_devices("c")}

        wait_until(lambda: statuses() == {A: "OFFERED", B: "SUCCEEDED", C: "ROLLED_BACK"}, 60, "genuine outcomes")
        offers = {d: reg.offers(d)[-1].id for d in (A, B, C)}
        time.sleep(0.5)  # a few ticks on the genuine outcomes
        before = (reg.campaign("c")["status"], statuses(), report(reg, "c")["by_status"])
        assert before[0] == RUNNING
        counts = (ids.rejected, ids.replayed, reg.foreign_events)

        def seal(device: str, body: dict, counter: int, key: bytes | None = None) -> bytes:
            return protocol.seal_report(key or keys[device], device, "events", counter, json.dumps(body).encode())

        # 1. replays: every genuine event B and C sent, again in order (their counters are not above the last)
        replays = [(f"fota/{d}/events", p) for d in (B, C) for p in spy.reports(f"fota/{d}/events")]
        assert len(replays) >= 8
        for topic, payload in replays:
            spy.pub(topic, payload)
        # 2. B's genuine `committed` on A's topic: a valid MAC, but of another device
        b_committed = next(p for p in spy.reports(f"fota/{B}/events") if b'"committed"' in p)
        spy.pub(f"fota/{A}/events", b_committed)
        # 3. unsigned JSON, as before issue 13: A committed, C committed
        spy.pub(f"fota/{A}/events", json.dumps({"event": "committed", "offer": offers[A]}).encode())
        spy.pub(f"fota/{C}/events", json.dumps({"event": "committed", "offer": offers[C]}).encode())
        # 4. made with B's key on A's and C's topics: A failed (would pause the campaign), C committed
        spy.pub(f"fota/{A}/events", seal(A, {"event": "failed", "offer": offers[A], "code": 5}, 10**6, key=keys[B]))
        spy.pub(f"fota/{C}/events", seal(C, {"event": "committed", "offer": offers[C]}, 10**6, key=keys[B]))
        # 5. B itself (its own valid key, a fresh counter) names A's offer, then C's: the offers are not B's
        spy.pub(f"fota/{B}/events", seal(B, {"event": "committed", "offer": offers[A]}, 10**6))
        spy.pub(f"fota/{B}/events", seal(B, {"event": "failed", "offer": offers[C], "code": 5}, 10**6 + 1))

        # (a device's newest report replayed is a redelivery: dropped without being counted, so -2 at most)
        wait_until(lambda: (ids.rejected, reg.foreign_events) == (counts[0] + 5, counts[2] + 2)
                   and ids.replayed >= counts[1] + len(replays) - 2, 15, "every forgery counted")
        time.sleep(1.0)  # five campaign ticks on whatever the forgeries changed
        after = (reg.campaign("c")["status"], statuses(), report(reg, "c")["by_status"])
        assert after == before
        assert {d: reg.offer(o).status for d, o in offers.items()} == {A: "OFFERED", B: "SUCCEEDED", C: "ROLLED_BACK"}
        assert reg.device(B)["version"] == "2.0.0" and reg.device(C)["version"] == "1.0.0"
    finally:
        spy.close()
        fleet.stop()
        server.stop()
