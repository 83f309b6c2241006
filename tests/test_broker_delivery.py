"""What a broker acknowledges, it delivers: a device that resets right after the PUBACK of its last
report (the `rebooting` event, then machine.reset()) must not lose it. The embedded amqtt broker and
mosquitto (the control) are held to the same rule."""

from __future__ import annotations

import socket
import struct
import threading

import paho.mqtt.client as mqtt
import pytest

from host_tools.fleet.protofleet import _length, _string, connect_packet
from host_tools.server.broker import EmbeddedBroker
from host_tools.server.identity import Identities
from host_tools.server.registry import Registry
from mqttkit import wait_until

pytestmark = pytest.mark.host

DEVICE = "dd44dd44"
ROUNDS, BURST = 12, 6  # connections, and QoS 1 messages each sends before it disconnects
OTHERS = [f"ee{i:06x}" for i in range(40)]  # a fleet that connects and subscribes meanwhile


def client(port: int, cred, client_id: str, on_message=None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set(cred.user, cred.password)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    if on_message is not None:
        c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(10)
    return c


def reset_after_acks(port: int, cred, topic: bytes, payloads: list[bytes]) -> None:
    """A device on a raw socket: CONNECT, QoS 1 PUBLISHes, every PUBACK read, then the socket closed with no
    DISCONNECT (what machine.reset() after blocking QoS 1 publishes looks like on the wire)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(connect_packet(cred.user, 30, cred.password))
        assert recv_exact(s, 4)[3] == 0, "CONNACK refused"
        for pid, payload in enumerate(payloads, 1):
            var = _string(topic) + struct.pack("!H", pid)
            s.sendall(b"\x32" + _length(len(var) + len(payload)) + var + payload)
        for _ in payloads:
            assert recv_exact(s, 4)[0] == 0x40, "expected a PUBACK"
    finally:
        s.close()


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise AssertionError("the broker closed the connection")
        out += chunk
    return out


def server_listening(ids, port: int, got: list[bytes]) -> mqtt.Client:
    """The server's login, subscribed (QoS 1) to DEVICE's events: every payload delivered goes to `got`."""
    sub = client(port, ids.creds["server"], "server", lambda c, u, m: got.append(bytes(m.payload)))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe(f"fota/{DEVICE}/events", 1)
    assert subscribed.wait(10)
    return sub


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(request, tmp_path):
    ids = Identities(Registry(tmp_path / "r.sqlite"))
    ids.creds = {"device": ids.enroll(DEVICE), "server": ids.server_credentials()}
    ids.creds.update({d: ids.enroll(d) for d in OTHERS})
    if request.param == "mosquitto":
        mosq = request.getfixturevalue("fota_mosquitto")
        mosq.sync(ids)
        yield ids, (mosq.server_port, mosq.port)  # the server's listener, the devices'
        return
    b = EmbeddedBroker(ids)
    b.start()
    try:
        yield ids, (b.port, b.port)
    finally:
        b.stop()


def test_qos1_messages_acknowledged_just_before_a_disconnect_are_all_delivered(broker):
    ids, (server_port, port) = broker
    got: list[bytes] = []
    sub = server_listening(ids, server_port, got)
    sent = []
    try:
        for r in range(ROUNDS):
            burst = [f"{r}.{i}".encode() for i in range(BURST)]
            sent += burst
            reset_after_acks(port, ids.creds["device"], f"fota/{DEVICE}/events".encode(), burst)
        wait_until(lambda: len(got) >= len(sent), 10, f"{len(sent)} messages")
    except AssertionError:
        pass
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert sorted(got) == sorted(sent), f"{len(sent) - len(set(got))} of {len(sent)} acknowledged messages were lost"


def test_messages_are_delivered_while_other_clients_subscribe(broker):
    """amqtt 0.12.1 walks its subscription table with awaits inside (each delivery asks the topic plugin), so a
    SUBSCRIBE that adds a filter meanwhile raised "dictionary changed size during iteration" and the message
    being broadcast was lost (seen as stray tracebacks in `make demo`): a fleet connecting while reports flow."""
    ids, (server_port, port) = broker
    got: list[bytes] = []
    sub = server_listening(ids, server_port, got)
    sent = [f"m{i}".encode() for i in range(240)]
    clients: list[mqtt.Client] = []

    def fleet_connects():
        for d in OTHERS:
            c = client(port, ids.creds[d], d)
            c.subscribe(f"fota/{d}/offer", 1)
            c.subscribe(f"fota/{d}/data", 0)
            clients.append(c)

    joiner = threading.Thread(target=fleet_connects)
    joiner.start()
    try:
        for i in range(0, len(sent), BURST):
            reset_after_acks(port, ids.creds["device"], f"fota/{DEVICE}/events".encode(), sent[i : i + BURST])
        joiner.join(60)
        try:
            wait_until(lambda: len(got) >= len(sent), 10, f"{len(sent)} messages")
        except AssertionError:
            pass
    finally:
        for c in [sub, *clients]:
            c.disconnect()
            c.loop_stop()
    assert sorted(got) == sorted(sent), f"{len(sent) - len(set(got))} of {len(sent)} acknowledged messages were lost"


def test_a_connecting_device_gets_no_retained_message_of_another_device(broker):
    """amqtt 0.12.1 replays, to every connecting client, the retained messages matching every topic filter any
    session holds (broker.py `_handle_client_session`), past the topic ACL: device A received B's retained offer."""
    ids, (server_port, port) = broker
    a, b = OTHERS[0], OTHERS[1]
    srv = client(server_port, ids.creds["server"], "server")
    srv.publish(f"fota/{b}/offer", b"offer for b", qos=1, retain=True).wait_for_publish(10)
    got_b: list[str] = []
    cb = client(port, ids.creds[b], b, lambda c, u, m: got_b.append(m.topic))
    cb.subscribe(f"fota/{b}/offer", 1)
    wait_until(lambda: got_b, 10, "B's own retained offer")
    got_a: list[str] = []
    ca = client(port, ids.creds[a], a, lambda c, u, m: got_a.append(m.topic))
    ca.subscribe(f"fota/{a}/offer", 1)
    try:
        import time

        time.sleep(1.0)
    finally:
        for c in (srv, cb, ca):
            c.disconnect()
            c.loop_stop()
    assert got_a == [], f"device {a} received {got_a}"
