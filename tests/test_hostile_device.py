"""Issue 12, device side: hostile bytes, slow retrieval and faults never stop a board's update service.

The parsers run under the real MicroPython; the link behaviours run on virtual boards (the real agent, the
real MQTT client, `fota.device.run`) against a real mosquitto, with the test playing the server's side of
docs/PROTOCOL.md itself (a `Peer`), so it can replay, trickle and replace what it sends.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest

from host_tools import protocol
from host_tools.image.package import parse_package
from host_tools.sim.runtime import BoardRun
from mqttkit import device_id, mqtt_board, wait_until
from simkit import fw_image, fw_package

pytestmark = pytest.mark.fw


def test_coap_parser_returns_false_for_an_option_header_at_the_end_of_a_full_buffer(micropython):
    code = """
from fota.coap.message import Msg
buf = bytearray(1152)
buf[0:4] = bytes([0x64, 0x45, 0, 1])            # CON 2.05, token of 4
buf[1151] = 0xd0                                   # an option whose delta needs one more byte
print(Msg().parse(memoryview(buf), 0, 1152))
buf[1150:1152] = bytes([0xe0, 0x01])               # delta 14: two more bytes, one there
print(Msg().parse(memoryview(buf), 0, 1152))
"""
    out = micropython(["-c", code])
    assert out.stdout.split() == [b"False", b"False"], out.stderr


def test_a_forged_zlib_stream_of_empty_stored_blocks_is_an_inflate_error(micropython):
    code = """
from fota.errors import OtaError
from fota.slot.inflate import Inflater
class M: encoded_size = 22; image_size = 65536; zlib_wbits = 10
inf = Inflater(lambda o, mv: None, M(), bytearray(5120), bytearray(4096))
try:
    inf.feed(0, memoryview(b"\\x78\\x9c" + b"\\x00\\x00\\x00\\xff\\xff" * 4))
    print("accepted", inf.finished())
except OtaError as e:
    print("OtaError", e.code)
"""
    out = micropython(["-c", code])
    assert out.stdout.split() == [b"OtaError", b"25"], out.stdout + out.stderr


def test_a_command_that_is_not_an_object_is_ignored(micropython):
    code = """
from fota.link.wire import parse_command
for t in (b'[1]', b'"x"', b'{"cmd": 1}', b'{"cmd": "approve", "offer": 1e999}', b'\\xff', b'{"cmd": "cancel", "offer": 7}'):
    print(parse_command(t))
"""
    out = micropython(["-c", code])
    assert out.stdout.decode().split("\n")[:6] == ["None"] * 5 + ["('cancel', 7)"], out.stdout + out.stderr


class Peer:
    """The server's side of docs/PROTOCOL.md for one device, played by the test over a real broker."""

    def __init__(self, host: str, port: int, device: str) -> None:
        self.device = device
        self.events: list[dict] = []
        self.gets: list[tuple[int, tuple[int, ...]]] = []
        self.on_get = None  # (offer id, offsets) -> None, called on paho's thread
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"peer-{device}")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe([(f"fota/{device}/events", 1), (f"fota/{device}/get", 0), (f"fota/{device}/state", 1)])
        self.client.loop_start()
        self.state: dict | None = None

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[1]
        if kind == "get":
            offer_id, offsets = protocol.decode_get(msg.payload)
            with self.lock:
                self.gets.append((offer_id, offsets))
            if self.on_get:
                self.on_get(offer_id, offsets)
        elif kind in ("events", "state"):
            body = json.loads(msg.payload.rpartition(b"\n")[0] if msg.payload.count(b"\n") else msg.payload)
            if kind == "events":
                with self.lock:
                    self.events.append(body)
            else:
                self.state = body

    def offer(self, offer_id: int, package: bytes, chunk: int = 1024) -> None:
        p = parse_package(package)
        blob = p.header + p.manifest_bytes + p.signature
        self.client.publish(f"fota/{self.device}/offer", protocol.encode_offer(offer_id, chunk, 0, blob), qos=1, retain=True).wait_for_publish(10)

    def data(self, offer_id: int, offset: int, payload: bytes, chunk: int = 1024) -> None:
        self.client.publish(f"fota/{self.device}/data", protocol.encode_data(offer_id, offset, payload[offset : offset + chunk]), qos=0)

    def event(self, name: str, offer_id: int | None = None) -> dict | None:
        with self.lock:
            return next((e for e in self.events if e.get("event") == name and offer_id in (None, e.get("offer"))), None)

    def close(self) -> None:
        self.client.publish(f"fota/{self.device}/offer", b"", qos=1, retain=True).wait_for_publish(10)
        self.client.loop_stop()
        self.client.disconnect()


def package(version: str = "2.0.0", sequence: int = 2) -> bytes:
    return fw_package(fw_image(version), version=version, sequence=sequence)


@pytest.fixture
def peer_board(tmp_path, mosquitto):
    """make(**config) -> (board, peer): a virtual board with those config.json entries, and the test's server side."""
    peers = []

    def make(**config):
        board = mqtt_board(tmp_path, "b", host=mosquitto.host, port=mosquitto.port, **config)
        peers.append(Peer(mosquitto.host, mosquitto.port, device_id(board)))
        return board, peers[-1]

    yield make
    for p in peers:
        p.close()


def test_a_replayed_chunk_does_not_keep_a_download_alive(peer_board):
    board, peer = peer_board(chunk_timeout_ms=500)
    payload = parse_package(pkg := package()).payload
    stop = threading.Event()

    def replay() -> None:  # chunk 0, once asked for, again every 200 ms: no progress at all
        wait_until(lambda: peer.gets or stop.is_set(), 60, "a chunk request")
        while not stop.wait(0.2):
            peer.data(5, 0, payload)

    with BoardRun(board):
        wait_until(lambda: peer.state, 60, "the device's state")
        peer.offer(5, pkg)
        t = threading.Thread(target=replay, daemon=True)
        t.start()
        try:
            failed = wait_until(lambda: peer.event("failed", 5), 40, "the attempt to end")
        finally:
            stop.set()
    assert failed["code"] == 28  # CONNECTION_LOST after max_timeouts timeouts, however often chunk 0 came again


def test_a_trickle_of_new_chunks_ends_at_the_attempt_deadline(peer_board):
    board, peer = peer_board(chunk_timeout_ms=2000, attempt_deadline_ms=4000)
    payload = parse_package(pkg := package()).payload
    stop = threading.Event()

    def trickle() -> None:  # one new chunk every 300 ms, whatever is asked: progress, but slow retrieval
        wait_until(lambda: peer.gets or stop.is_set(), 60, "a chunk request")
        offset = 0
        while not stop.wait(0.3) and offset < len(payload):
            peer.data(6, offset, payload)
            offset += 1024

    with BoardRun(board):
        wait_until(lambda: peer.state, 60, "the device's state")
        peer.offer(6, pkg)
        threading.Thread(target=trickle, daemon=True).start()
        try:
            failed = wait_until(lambda: peer.event("failed", 6), 40, "the deadline")
        finally:
            stop.set()
    assert failed["code"] == 37 and failed["name"] == "DEADLINE"
    assert len(payload) > 20 * 1024  # the trickle could not have finished within the deadline


def test_an_offer_that_replaces_one_in_download_is_taken(peer_board):
    board, peer = peer_board()
    payload = parse_package(pkg := package()).payload

    def serve(offer_id: int, offsets: tuple[int, ...]) -> None:
        if offer_id == 8:  # the second offer is served; the first one's requests are left unanswered
            for offset in offsets:
                peer.data(8, offset, payload)

    peer.on_get = serve
    with BoardRun(board):
        wait_until(lambda: peer.state, 60, "the device's state")
        peer.offer(7, pkg)
        wait_until(lambda: any(g[0] == 7 for g in peer.gets), 30, "offer 7 downloading")
        peer.offer(8, pkg)  # replaces offer 7 (BUSY before: offer 8 was marked done and never fetched)
        wait_until(lambda: peer.event("committed", 8), 90, "offer 8 committed")
    assert peer.event("failed", 7)["code"] == 26  # the replaced download: CANCELLED, reported
    assert not peer.event("failed", 8)


def test_a_board_left_running_after_an_update_never_resets_on_its_own(peer_board):
    board, peer = peer_board(self_test_ms=2000)  # the self-test's watchdog: 2 s, and it cannot be stopped
    payload = parse_package(pkg := package()).payload
    peer.on_get = lambda offer_id, offsets: [peer.data(offer_id, o, payload) for o in offsets]
    with BoardRun(board) as run:
        wait_until(lambda: peer.state, 60, "the device's state")
        peer.offer(9, pkg)
        wait_until(lambda: peer.event("committed", 9), 90, "offer 9 committed")
        boots = len(run.boots())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:  # five watchdog periods after the commit
            assert len(run.boots()) == boots, run.transcript()[-2000:]
            time.sleep(0.2)
        assert "APP 2.0.0" in run.transcript()
