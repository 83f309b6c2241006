"""Protocol-level devices (host_tools/fleet/protodevice.py) against `fota serve` with its embedded broker."""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host_tools import firmware, protocol
from host_tools.fleet import protodevice
from host_tools.fleet.protodevice import DeviceSpec, enroll
from host_tools.fleet.protofleet import ProtoFleet
from host_tools.image.keys import FileSigner
from host_tools.image.package import Manifest, make_package, parse_package
from host_tools.server.registry import FINAL
from host_tools.server.service import Server, ServerConfig
from simkit import app_image, session_signer

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parent.parent
STATE_KEYS = {"id", "board", "hw_rev", "version", "seq", "slot", "state", "progress", "result", "code", "detail", "offer", "errors"}
PAD = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(1250))  # 40 KB that zlib cannot shrink


def image(version: str) -> bytes:
    return app_image(version, (("pad.py", f"DATA = {PAD!r}\n"),))


def package(version="2.0.0", sequence=2, *, encoding="raw", signer=None, board="sim", hw_revs=("A",), **fields) -> bytes:
    m = Manifest(sequence=sequence, version=version, board=board, chip_id=0, hw_revs=hw_revs, image_size=0,
                 image_sha256=b"", **fields)
    return make_package(image(version), m, signer or session_signer(), encoding=encoding).to_bytes()


def spec(device_id: str, **kw) -> DeviceSpec:
    return DeviceSpec(device_id, **{"keys": (session_signer().public_key,), "version": "1.0.0", "seq": 1, **kw})


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(ServerConfig(tmp_path_factory.mktemp("server")))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def mosquitto_server(tmp_path, fota_mosquitto):
    """`fota serve` on mosquitto, for what amqtt 0.12 cannot take: many devices at once (each new client gets the
    retained messages of every subscription in the broker, and sessions die when clean sessions end meanwhile), and
    devices that vanish mid-download (their server-side transports are left unclosed)."""
    srv = Server(ServerConfig(tmp_path / "server", broker_url=fota_mosquitto.server_url))
    srv.identities.server_credentials()
    fota_mosquitto.sync(srv.identities)
    srv.broker_files = fota_mosquitto  # fleet() writes the enrolled devices' logins into its files
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gets(server):
    """Chunk requests seen on the broker, by device id (a subscriber of P/+/get)."""
    seen: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="get-spy")
    cred = server.identities.server_credentials()  # only the server may read every device's requests
    client.username_pw_set(cred.user, cred.password)
    client.on_message = lambda c, u, m: seen.__setitem__(m.topic.split("/")[1], seen.get(m.topic.split("/")[1], 0) + 1)
    client.connect(server.broker.host, server.broker.port)
    client.subscribe("fota/+/get", 0)
    client.loop_start()
    yield seen
    client.disconnect()
    client.loop_stop()


@contextmanager
def fleet(server, specs, **kw):
    specs = enroll(specs, server.identities)  # each device its own login and report key, as fota provision does
    if getattr(server, "broker_files", None) is not None:
        server.broker_files.sync(server.identities)
    f = ProtoFleet(server.broker_files.url if getattr(server, "broker_files", None) else server.broker_url, specs, **kw)
    f.start()
    try:
        assert f.wait_connected(30), f"{len(f.conns)} of {len(specs)} devices connected"
        ids = [s.id for s in specs]
        wait_until(lambda: all(server.registry.device(i) for i in ids), 30, "every device's first state")
        yield f
    finally:
        f.stop()


def final(server, offer_id: int, timeout: float = 30):
    return wait_until(lambda: (o := server.registry.offer(offer_id)) and o.status in FINAL and o, timeout, f"offer {offer_id}")


def events(server, device_id: str) -> list[dict]:
    return [e["body"] for e in server.registry.events(device_id)]


@pytest.mark.parametrize("encoding", ["raw", "zlib"])
def test_ok_device_commits_and_reports_its_new_version(server, encoding):
    did = f"ok-{encoding}"
    with fleet(server, [spec(did)]) as f:
        offer_id = server.deploy(package(encoding=encoding), [did])[0]
        assert final(server, offer_id).status == "SUCCEEDED"
        row = wait_until(lambda: (d := server.registry.device(did)) and d["version"] == "2.0.0" and d, 10, "v2 reported")
        dev = f.device(did)
        assert (dev.version, dev.seq, dev.state) == ("2.0.0", 2, 0)
        assert set(dev.status()) == STATE_KEYS
    assert row["seq"] == 2 and row["slot"] == "ota_1"
    names = [e["event"] for e in events(server, did)]
    assert names == ["downloading", "progress", "downloaded", "rebooting", "committed"]
    assert all(e["offer"] == offer_id for e in events(server, did))
    assert dev.bytes_in == len(parse_package(package(encoding=encoding)).payload)  # every chunk once


def test_failed_self_test_rolls_back_with_code_22(server):
    did = "selftest-fails"
    with fleet(server, [spec(did, behaviour="fail-self-test")]) as f:
        offer = final(server, server.deploy(package(), [did])[0])
        wait_until(lambda: server.registry.device(did)["code"] == 22, 10, "the rollback in the state")
        dev = f.device(did)
    assert (offer.status, offer.code, offer.reason) == ("ROLLED_BACK", 22, "SELF_TEST_FAILED: app")
    assert (dev.version, dev.seq) == ("1.0.0", 1)
    last = events(server, did)[-1]
    assert last == {"event": "rolled_back", "offer": offer.id, "version": "2.0.0", "code": 22, "name": "SELF_TEST_FAILED",
                    "detail": "app"}
    assert server.registry.device(did)["version"] == "1.0.0"


REFUSALS = {
    "wrong-board": ({}, {"board": "esp32_generic"}, 8, "WRONG_BOARD"),
    "wrong-hw-rev": ({"hw_rev": "B"}, {"hw_revs": ("A", "C")}, 10, "WRONG_HW_REV"),
    "replayed-sequence": ({"seq": 5}, {"sequence": 5}, 11, "ROLLBACK"),
    "bad-signature": ({}, {"tamper": True}, 5, "BAD_SIGNATURE"),
    "unknown-key": ({}, {"signer": FileSigner(Ed25519PrivateKey.generate())}, 4, "UNKNOWN_KEY"),
    "expired": ({}, {"expires": 1_600_000_000}, 12, "EXPIRED"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_offers_never_ask_for_a_chunk(server, gets, case):
    overrides, fields, code, name = REFUSALS[case]
    did = f"refuse-{case}"
    data = package(**{k: v for k, v in fields.items() if k != "tamper"})
    if fields.get("tamper"):
        mlen = int.from_bytes(data[8:12], "little")
        sig = 32 + mlen
        data = data[:sig] + bytes([data[sig] ^ 1]) + data[sig + 1 :]
    with fleet(server, [spec(did, **overrides)]) as f:
        offer = final(server, server.deploy(data, [did])[0])
        time.sleep(0.3)  # a chunk request would have reached the spy by now
        dev = f.device(did)
    assert (offer.status, offer.code) == ("REFUSED", code)
    assert gets.get(did, 0) == 0 and dev.gets == 0 and dev.chunks == 0
    assert events(server, did) == [{"event": "failed", "offer": offer.id, "code": code, "name": name, "detail": "offer refused"}]
    assert server.registry.device(did)["code"] == code


def test_any_hw_rev_matches_star(server):
    with fleet(server, [spec("star", hw_rev="Z9")]):
        assert final(server, server.deploy(package(hw_revs=("*",)), ["star"])[0]).status == "SUCCEEDED"


def test_crash_mid_download_resumes_and_succeeds(mosquitto_server):
    server = mosquitto_server
    did = "crashes"
    with fleet(server, [spec(did, behaviour="crash", crash_delay=0.5)]) as f:
        offer = final(server, server.deploy(package(), [did], chunk=1024)[0])
        dev = f.device(did)
        connects = f.connects
    total = -(-len(image("2.0.0")) // 1024)
    assert offer.status == "SUCCEEDED" and dev.crashes == 1
    assert connects == 3  # first connection, after the crash, after the reboot
    assert total <= dev.chunks <= total + dev.spec.window  # resumed: only what was in flight came twice
    assert [e["event"] for e in events(server, did)].count("downloading") == 1


def test_silent_device_leaves_the_offer_open(server, gets):
    did = "silent"
    with fleet(server, [spec(did, behaviour="silent")]) as f:
        offer_id = server.deploy(package(), [did])[0]
        wait_until(lambda: f.device(did).offers_ignored == 1, 10, "the offer to arrive")
        time.sleep(1.0)
    assert server.registry.offer(offer_id).status == "OFFERED"
    assert gets.get(did, 0) == 0 and events(server, did) == []


def test_consent_waits_for_approve(server):
    did = "consent"
    with fleet(server, [spec(did)]):
        offer_id = server.deploy(package(), [did], policy="consent")[0]
        wait_until(lambda: server.registry.offer(offer_id).status == "DOWNLOADED", 10, "DOWNLOADED")
        time.sleep(0.5)
        assert server.registry.offer(offer_id).status == "DOWNLOADED"
        server.mqtt.command(did, {"cmd": "approve", "offer": offer_id})
        assert final(server, offer_id).status == "SUCCEEDED"


def test_lost_chunks_are_asked_for_again(server):
    did = "lossy"
    with fleet(server, [spec(did, loss=0.3, chunk_timeout=0.3)]) as f:
        offer = final(server, server.deploy(package(), [did], chunk=2048)[0])
        dev = f.device(did)
    assert offer.status == "SUCCEEDED" and dev.lost > 0 and dev.rerequests > 0


def test_codes_are_the_firmwares():
    # The simulator and the server use the firmware's own table (host_tools.firmware), not a copy.
    fw = firmware.errors()
    assert protodevice.E is fw and fw.__name__ == "_fota_firmware.errors"
    assert Path(fw.__file__) == ROOT / "firmware" / "fota" / "errors.py"
    assert all(fw.name(getattr(fw, n)) == n for n in fw._NAMES[1:])
    assert protocol.is_refusal(fw.BAD_HEADER) and protocol.is_refusal(fw.BAD_ENCODING) and not protocol.is_refusal(fw.DIGEST_MISMATCH)


def test_two_hundred_devices_update_at_once(mosquitto_server):
    server = mosquitto_server
    ids = [f"bulk-{i:03d}" for i in range(200)]
    data = package(version="3.0.0", sequence=3)
    with fleet(server, [replace(spec(i), reboot_delay=0.2) for i in ids], connect_rate=500, max_connecting=16) as f:
        start = time.monotonic()
        cpu0 = f.stats().cpu_s
        offers = server.deploy(data, ids)
        deployed = time.monotonic() - start
        wanted = set(offers)

        def finished():
            done = [o for o in server.registry.offers() if o.id in wanted and o.status in FINAL]
            return len(done) == len(wanted) and done

        done = wait_until(finished, 60, "200 outcomes")
        elapsed = time.monotonic() - start
        stats = f.stats()
    print(f"\n200 devices: offers published in {deployed:.1f} s, all final after {elapsed:.1f} s; fleet thread CPU "
          f"{stats.cpu_s - cpu0:.2f} s; {stats.chunks} chunks, {stats.chunk_bytes / 1e6:.1f} MB, {stats.gets} requests")
    assert {o.status for o in done} == {"SUCCEEDED"}
    assert elapsed < 60
