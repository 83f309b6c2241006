"""Issue 13, device identity (docs/SECURITY.md): each attack of the issue, against the embedded amqtt broker
and a mosquitto started with its real password and ACL files, over MQTT, CoAP and through a gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import aiocoap
import paho.mqtt.client as mqtt
import pytest

from host_tools import protocol
from host_tools.server.broker import BrokerError, EmbeddedBroker
from host_tools.server.gateway import Gateway, GatewayConfig
from host_tools.server.identity import Identities
from host_tools.server.service import Server, ServerConfig
from mqttkit import wait_until

A, B, C = "aa11aa11", "bb22bb22", "cc33cc33"


@pytest.fixture(params=["amqtt", "mosquitto"])
def stack(request, tmp_path):
    """A server (CoAP on) with devices A, B, C enrolled, on the embedded broker or on mosquitto with its files."""
    mosq = request.getfixturevalue("fota_mosquitto") if request.param == "mosquitto" else None
    server = Server(ServerConfig(tmp_path / "server", broker_url=mosq.server_url if mosq else None, coap_port=0))
    server.creds = {d: server.identities.enroll(d) for d in (A, B, C)}
    server.identities.server_credentials()
    server.mosq = mosq
    if mosq:
        mosq.sync(server.identities)
    server.start()
    yield server
    server.stop()


def host_port(server, server_login: bool = False) -> tuple[str, int]:
    """Where a client connects: on mosquitto the devices' listener, or the server's (`server_login`)."""
    url = server.broker_url if server_login or not server.mosq else server.mosq.url
    host, port = url.split("//")[1].rsplit(":", 1)
    return host, int(port)


class Client:
    """A paho client that records the CONNACK code and every message it receives."""

    def __init__(self, server, user: str | None = None, password: str | None = None, subs: tuple[str, ...] = (),
                 client_id: str | None = None, server_login: bool = False):
        self.rc: int | None = None
        self.got: list[tuple[str, bytes]] = []
        self.subs = subs
        self.drops = 0  # connections the broker closed
        self._done = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}-{time.time_ns()}")
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: setattr(self, "drops", self.drops + 1)
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect(*host_port(server, server_login))
        self.c.loop_start()
        self._done.wait(10)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.rc = reason.value
        if self.rc == 0:
            for s in self.subs:
                client.subscribe(s, 1)
        self._done.set()

    def pub(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def as_server(server, subs=("fota/#",)) -> Client:
    cred = server.identities.server_credentials()
    return Client(server, cred.user, cred.password, subs, server_login=True)


def as_device(server, device: str, subs=(), client_id: str | None = None) -> Client:
    """A device's login; its client id is its device id, as firmware/fota/device.py connects (unless given)."""
    cred = server.creds[device]
    return Client(server, cred.user, cred.password, subs, client_id=client_id or device)


def sealed(server, device: str, kind: str, body: dict, counter: int, key: bytes | None = None) -> bytes:
    return protocol.seal_report(key or server.creds[device].key, device, kind, counter, json.dumps(body).encode())


STATE = {"id": A, "board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1, "slot": "ota_0", "state": 0,
         "progress": None, "result": 0, "code": 0, "detail": None, "offer": None, "errors": []}


# -- broker access ------------------------------------------------------------------------------------------
def test_anonymous_and_wrong_passwords_are_refused(stack):
    assert Client(stack).rc != 0  # no username at all
    assert Client(stack, A, "not-the-password").rc != 0
    assert Client(stack, "fota-server", stack.creds[A].password).rc != 0  # a device's password is not the server's
    ok = as_device(stack, A)
    assert ok.rc == 0
    ok.close()


def test_a_device_cannot_publish_or_subscribe_on_another_devices_topics(stack):
    spy = as_server(stack)
    a = as_device(stack, A, subs=(f"fota/{B}/offer", f"fota/{B}/data", "fota/#", f"fota/{A}/offer"))
    time.sleep(0.3)
    for topic in (f"fota/{B}/state", f"fota/{B}/events", f"fota/{B}/get", f"fota/{B}/offer", f"fota/{A}/offer",
                  f"fota/{A}/data", "fota/x"):
        a.pub(topic, b"forged", retain=topic.endswith("offer"))
    a.pub(f"fota/{A}/state", sealed(stack, A, "state", STATE, 1))  # its own state: allowed
    wait_until(lambda: any(t == f"fota/{A}/state" for t, _ in spy.got), 10, "A's own state at the server")
    time.sleep(0.3)
    assert [t for t, _ in spy.got if t != f"fota/{A}/state"] == []  # nothing else went through
    spy.pub(f"fota/{B}/offer", b"B's offer")
    spy.pub(f"fota/{B}/data", b"B's chunk")
    spy.pub(f"fota/{A}/offer", b"A's offer")
    wait_until(lambda: (f"fota/{A}/offer", b"A's offer") in a.got, 10, "A's own offer")
    time.sleep(0.3)
    assert [t for t, _ in a.got] == [f"fota/{A}/offer"]  # never B's, whatever it subscribed to
    for c in (a, spy):
        c.close()


# -- reports ---------------------------------------------------------------------------------------------
def test_forged_and_replayed_reports_change_nothing(stack):
    ids, reg = stack.identities, stack.registry
    a, b = as_device(stack, A), as_device(stack, B)
    genuine = sealed(stack, A, "state", STATE, 5)
    a.pub(f"fota/{A}/state", genuine)
    wait_until(lambda: reg.device(A), 10, "A's genuine state")
    offer_a = reg.create_offer(A, "pkg", chunk=4096, policy=0)
    offer_b = reg.create_offer(B, "pkg", chunk=4096, policy=0)
    before = (ids.rejected, ids.replayed, reg.foreign_events)

    # B's own, correctly MACed, `committed` naming A's offer: the offer is not B's
    b.pub(f"fota/{B}/events", sealed(stack, B, "events", {"event": "committed", "offer": offer_a}, 1))
    # a state claiming seq 99 without A's key (a stolen server login could publish it), the old unsigned JSON,
    # a MAC made with B's key, and A's own old state replayed (lower counter)
    spy = as_server(stack, subs=())
    spy.pub(f"fota/{A}/state", sealed(stack, A, "state", STATE | {"seq": 99}, 6, key=b"\0" * 32))
    spy.pub(f"fota/{A}/events", json.dumps({"event": "committed", "offer": offer_a}).encode())
    spy.pub(f"fota/{A}/events", sealed(stack, A, "events", {"event": "failed", "offer": offer_a, "code": 11}, 7,
                                       key=stack.creds[B].key))
    spy.pub(f"fota/{A}/state", sealed(stack, A, "state", STATE | {"seq": 99}, 4))  # counter 4 < 5: a replay
    wait_until(lambda: (ids.rejected, ids.replayed, reg.foreign_events) == (before[0] + 3, before[1] + 1, before[2] + 1),
               10, "every forgery counted")
    assert reg.offer(offer_a).status == "OFFERED" and reg.offer(offer_b).status == "OFFERED"
    assert reg.device(A)["seq"] == 1

    # the genuine report again (QoS 1 redelivery, a retained state): dropped, not counted, nothing changes
    spy.pub(f"fota/{A}/state", genuine)
    a.pub(f"fota/{A}/events", sealed(stack, A, "events", {"event": "committed", "offer": offer_a}, 8))
    wait_until(lambda: reg.offer(offer_a).status == "SUCCEEDED", 10, "A's genuine outcome")
    assert reg.device(A)["seq"] == 1 and ids.replayed == before[1] + 1
    for c in (a, b, spy):
        c.close()


def coap_post(url: str, payload: bytes) -> aiocoap.numbers.codes.Code:
    async def go():
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            return (await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=url, payload=payload)).response).code
        finally:
            await ctx.shutdown()

    return asyncio.run(go())


@pytest.mark.parametrize("stack", ["amqtt"], indirect=True)
def test_forged_and_replayed_reports_over_coap_and_through_a_gateway_change_nothing(stack, tmp_path):
    ids, reg = stack.identities, stack.registry
    offer_a = reg.create_offer(A, "pkg", chunk=4096, policy=0)
    cred = ids.enroll_gateway("lab", [A])
    gw = Gateway(GatewayConfig(upstream=stack.broker_url, data_dir=tmp_path / "gw", devices=[A], coap_port=0,
                               auth=(cred.user, cred.password)))
    gw.start()
    stopped = False
    try:
        for n, base in ((100, stack.coap.url), (200, gw.coap.url)):  # the server's CoAP, then relayed by the gateway
            genuine = sealed(stack, A, "events", {"event": "downloading", "offer": offer_a}, n)
            assert coap_post(f"{base}/fota/{A}/events", genuine) == aiocoap.CHANGED
            wait_until(lambda: reg.offer(offer_a).status == "DOWNLOADING", 10, "the genuine event")
            rejected, replayed = ids.rejected, ids.replayed
            coap_post(f"{base}/fota/{A}/events", json.dumps({"event": "committed", "offer": offer_a}).encode())
            coap_post(f"{base}/fota/{A}/events", sealed(stack, A, "events", {"event": "committed", "offer": offer_a}, 10**6,
                                                        key=b"\1" * 32))
            coap_post(f"{base}/fota/{A}/state", sealed(stack, A, "state", STATE | {"seq": 99}, 10**6, key=b"\1" * 32))
            old = sealed(stack, A, "events", {"event": "failed", "offer": offer_a, "code": 11}, 1)  # below the last counter
            coap_post(f"{base}/fota/{A}/events", old)
            want = (rejected + 3, replayed + 1)
            wait_until(lambda: (ids.rejected, ids.replayed) == want, 10, f"forgeries via {base}")  # noqa: B023
            assert reg.offer(offer_a).status == "DOWNLOADING" and reg.device(A) is None
        # the gateway's login only reaches its devices' topics (its client id is its login: the gateway itself
        # stops first, or this connection and its reconnects would take over each other's session)
        gw.stop()
        stopped = True
        gwc = Client(stack, cred.user, cred.password, client_id=cred.user)
        spy = as_server(stack)
        gwc.pub(f"fota/{B}/events", sealed(stack, B, "events", {"event": "committed", "offer": 1}, 1))
        gwc.pub(f"fota/{A}/offer", b"an offer from the gateway", retain=True)
        time.sleep(0.5)
        assert [t for t, _ in spy.got if t != f"fota/{A}/state"] == []  # (A's state: the retained one relayed above)
        gwc.close()
        spy.close()
    finally:
        if not stopped:
            gw.stop()


def test_a_revoked_device_can_no_longer_connect_or_report_while_the_others_continue(stack):
    ids, reg = stack.identities, stack.registry
    a = as_device(stack, A)
    a.pub(f"fota/{A}/state", sealed(stack, A, "state", STATE, 1))
    wait_until(lambda: reg.device(A), 10, "A's state")
    subprocess.run([*FOTA, "device", "revoke", A, "--data", str(stack.config.data_dir)], check=True, capture_output=True)
    if stack.mosq:
        stack.mosq.sync(ids)  # fota broker-files + SIGHUP, what docs/DEPLOY.md says to do after a revoke
    # the connection A had open at revocation is closed, with nothing else done: by the embedded broker, or on
    # mosquitto by the server (a takeover of A's client id on its own listener)
    started = time.monotonic()
    wait_until(lambda: not a.c.is_connected(), 10, "A's open connection closed")
    closed_after = time.monotonic() - started
    a.c.loop_stop()  # (paho would reconnect; the broker refuses it, asserted next)
    assert Client(stack, A, stack.creds[A].password, client_id=A).rc != 0
    assert closed_after < 5
    rejected = ids.rejected
    spy = as_server(stack, subs=())
    spy.pub(f"fota/{A}/state", sealed(stack, A, "state", STATE | {"version": "9.9.9"}, 2))  # its key no longer counts
    b = as_device(stack, B)
    assert b.rc == 0
    b.pub(f"fota/{B}/state", sealed(stack, B, "state", STATE | {"id": B}, 1))
    wait_until(lambda: reg.device(B) and ids.rejected == rejected + 1, 10, "B recorded, A refused")
    assert reg.device(A)["version"] == "1.0.0"
    assert b.c.is_connected()  # only the revoked login was closed
    for c in (a, b, spy):
        c.close()


def test_a_neighbour_device_cannot_take_over_another_devices_session(stack):
    """MQTT: a CONNECT with a connected client id closes the older connection. A, with its own valid login (and
    anyone with a wrong one), connects again and again with B's client id: B stays connected and keeps working."""
    reg = stack.registry
    gw = stack.identities.enroll_gateway("lab2", [A])  # a gateway's login is bound to its own client id too
    if stack.mosq:
        stack.mosq.sync(stack.identities)
    b = as_device(stack, B, subs=(f"fota/{B}/offer",))
    assert b.rc == 0
    time.sleep(0.3)
    for attempt in range(3):
        Client(stack, gw.user, gw.password, client_id=B).close()
        a = as_device(stack, A, client_id=B)
        if a.rc == 0:  # mosquitto: connected, but under its own id (use_username_as_clientid); it can act only as A
            a.pub(f"fota/{B}/state", sealed(stack, B, "state", STATE | {"id": B, "version": "6.6.6"}, 50 + attempt,
                                            key=stack.creds[A].key))
        a.close()
        Client(stack, A, "not-the-password", client_id=B).close()
        Client(stack, B, "not-the-password", client_id=B).close()
    time.sleep(0.5)
    assert b.c.is_connected() and b.drops == 0, "B was disconnected by a neighbour's CONNECT"
    spy = as_server(stack, subs=())
    spy.pub(f"fota/{B}/offer", b"B's offer")
    wait_until(lambda: (f"fota/{B}/offer", b"B's offer") in b.got, 10, "B still receives its own topics")
    b.pub(f"fota/{B}/state", sealed(stack, B, "state", STATE | {"id": B}, 1))
    wait_until(lambda: reg.device(B), 10, "B's report recorded")
    assert reg.device(B)["version"] == "1.0.0" and b.drops == 0
    for c in (b, spy):
        c.close()


FOTA = ["python", "-m", "host_tools.cli"]


@pytest.fixture(autouse=True)
def _python(monkeypatch):
    import sys

    FOTA[0] = sys.executable


# -- units ---------------------------------------------------------------------------------------------------
def test_the_embedded_broker_refuses_to_listen_beyond_loopback_without_tls(tmp_path):
    from host_tools.server.registry import Registry

    ids = Identities(Registry(tmp_path / "r.sqlite"))
    with pytest.raises(BrokerError, match="without TLS"):
        EmbeddedBroker(ids, host="0.0.0.0")
    EmbeddedBroker(ids, host="0.0.0.0", tls=("c.pem", "k.pem"))  # with TLS it would start
    EmbeddedBroker(ids, host="127.0.0.1")


@pytest.mark.fw
def test_the_device_mac_matches_the_servers_and_its_counter_survives_a_reboot(tmp_path):
    """firmware/fota/link/auth.py under micropython: same bytes as host_tools.protocol, counters never reused."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "t.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(root / 'firmware')!r})
from fota.link.auth import Signer
for boot in range(3):
    s = Signer(bytes(range(32)), "aa11", path={str(tmp_path / 'ctr')!r})
    for i in range(3):
        print(s.seal("state", '{{"n": %d}}' % i).decode())
""")
    out = subprocess.run([str(root / ".venv" / "bin" / "micropython"), str(script)], capture_output=True, text=True, timeout=30)
    lines = out.stdout.split("\n")
    reports = ["\n".join(lines[i : i + 2]).encode() for i in range(0, 18, 2)]
    counters = []
    for r in reports:
        body, counter, mac = protocol.split_report(r)
        assert mac == protocol.report_mac(bytes(range(32)), "aa11", "state", counter, body)
        counters.append(counter)
    assert counters == sorted(set(counters)) and len(counters) == 9  # strictly increasing across the 3 "boots"
