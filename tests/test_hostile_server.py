"""Issue 12, server side: hostile input never stops a service; packages are checked before they are stored.

Each attack here once ended the MQTT service's thread (the process lived on, serving nothing), was
stored verbatim, or was accepted as a package. A real mosquitto carries the MQTT messages, a real
aiocoap client the CoAP ones.
"""

from __future__ import annotations

import asyncio
import json
import threading

import paho.mqtt.client as paho
import pytest

from host_tools import protocol
from host_tools.image.package import PackageError
from host_tools.server import inbound
from host_tools.server.identity import Identities
from host_tools.server.mqtt_service import MqttService
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry
from host_tools.server.service import Server, ServerConfig, ServiceDied
from mqttkit import wait_until
from simkit import fw_image, fw_package

pytestmark = pytest.mark.host

STATE = {"id": "d1", "board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1, "slot": "ota_0", "state": 0,
         "progress": None, "result": 0, "code": 0, "detail": None, "offer": None, "errors": [[11, "offer refused", None]]}

# (name, topic kind, payload): each once raised out of the service, or was stored as it came
ATTACKS = [
    ("state is a list", "state", b"[]"),
    ("event offer is a list", "events", json.dumps({"event": "failed", "offer": [1], "code": 11}).encode()),
    ("event offer overflows", "events", b'{"event": "failed", "offer": 1e999, "code": 11}'),
    ("event offer is Infinity", "events", b'{"event": "committed", "offer": Infinity}'),
    ("state value is a dict", "state", json.dumps(STATE | {"board": {"x": 1}}).encode()),
    ("state of 8 MiB", "state", json.dumps(STATE | {"errors": [[1, "x" * (8 << 20), 0]]}).encode()),
    ("state not utf-8", "state", b'{"board": "\xff\xfe"}'),
    ("deep nesting", "state", b"[" * 100000),
    ("get too short", "get", b"\x01\x00"),
    ("get count lies", "get", b"\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00"),
]


def publisher(host: str, port: int) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="hostile")
    c.connect(host, port)
    c.loop_start()
    return c


@pytest.mark.parametrize("name,kind,payload", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_parser_refuses_with_an_inbound_error(name, kind, payload):
    parse = {"state": inbound.parse_state, "events": inbound.parse_event, "get": inbound.parse_get}[kind]
    with pytest.raises(inbound.InboundError):
        parse(payload)


def test_a_device_state_and_its_events_parse():
    state = inbound.parse_state(json.dumps(STATE | {"progress": [3, 9], "offer": 7}).encode())
    assert state.progress == (3, 9) and state.offer == 7 and state.errors == ((11, "offer refused", None),)
    event = inbound.parse_event(b'{"event": "failed", "offer": 7, "code": 11, "name": "ROLLBACK", "nested": {"a": 1}}')
    assert event.as_dict() == {"event": "failed", "offer": 7, "code": 11, "name": "ROLLBACK"}
    assert inbound.parse_get(protocol.encode_get(7, [0, 4096])).offsets == (0, 4096)


class Sealer:
    """A device's reports as it sends them: the JSON with its counter and MAC (valid credentials, any content)."""

    def __init__(self, ids: Identities, device: str) -> None:
        self.device, self.key, self.counter = device, ids.enroll(device).key, 0

    def __call__(self, kind: str, body: bytes) -> bytes:
        self.counter += 1
        return protocol.seal_report(self.key, self.device, kind, self.counter, body) if kind != "get" else body


@pytest.fixture
def service(tmp_path, mosquitto):
    registry = Registry(tmp_path / "registry.sqlite")
    ids = Identities(registry)
    svc = MqttService(registry, PackageStore(tmp_path / "packages"), f"mqtt://{mosquitto.host}:{mosquitto.port}", identities=ids)
    svc.start()
    yield svc
    svc.stop()
    registry.close()


def test_hostile_messages_are_counted_and_the_service_lives_on(tmp_path, mosquitto, service):
    attacker = publisher(mosquitto.host, mosquitto.port)
    evil, d1 = Sealer(service.identities, "evil"), Sealer(service.identities, "d1")  # a device with its own valid key
    try:
        for _, kind, payload in ATTACKS:
            attacker.publish(f"fota/evil/{kind}", evil(kind, payload), qos=1).wait_for_publish(10)
        attacker.publish("fota/../get", protocol.encode_get(1, [0]), qos=1).wait_for_publish(10)  # not a device id

        def counted():
            return service.stats.total() + service.identities.rejected >= len(ATTACKS) + 1

        wait_until(counted, 30, "every attack counted")
        attacker.publish("fota/d1/state", d1("state", json.dumps(STATE).encode()), qos=1).wait_for_publish(10)
        row = wait_until(lambda: service.registry.device("d1"), 30, "a valid state after the attacks")
    finally:
        attacker.loop_stop()
        attacker.disconnect()
    assert service.alive() and row["version"] == "1.0.0"
    assert service.stats.errors == {}  # every attack refused by the parser, none caught as a crash
    assert all(len(d["errors"] or "") < 10_000 for d in service.registry.devices())  # nothing of 8 MiB stored
    assert service.registry.device("evil") is None


def test_a_retained_poison_state_does_not_stop_a_restarted_service(tmp_path, mosquitto):
    registry = Registry(tmp_path / "registry.sqlite")
    ids = Identities(registry)
    any1, any2 = Sealer(ids, "ANY"), Sealer(ids, "ANY2")
    attacker = publisher(mosquitto.host, mosquitto.port)
    attacker.publish("fota/ANY/state", any1("state", b"[]"), qos=1, retain=True).wait_for_publish(10)
    poison = any2("state", json.dumps(STATE | {"seq": {"a": 1}}).encode())
    attacker.publish("fota/ANY2/state", poison, qos=1, retain=True).wait_for_publish(10)
    attacker.loop_stop()
    attacker.disconnect()
    for restart in range(2):
        with ids._lock:  # the counters as a fresh server would have them: the retained reports are new to it
            ids.db.execute("UPDATE identities SET counter = -1, seen = 0, state_counter = -1")  # each counter is taken once
        svc = MqttService(registry, PackageStore(tmp_path / "packages"), f"mqtt://{mosquitto.host}:{mosquitto.port}",
                          client_id=f"fota-server-{restart}", identities=ids)
        svc.start()
        try:
            wait_until(lambda s=svc: s.stats.counts["state"] >= 2, 30, "the retained poison refused")
            assert svc.alive() and ids.rejected == 0  # MACed: refused by the parser, not by the identity layer
        finally:
            svc.stop()
    registry.close()


def test_chunk_requests_are_bounded_and_rate_limited(tmp_path, mosquitto):
    registry = Registry(tmp_path / "registry.sqlite")
    store = PackageStore(tmp_path / "packages")
    svc = MqttService(registry, store, f"mqtt://{mosquitto.host}:{mosquitto.port}", serve_rate=64 << 10)
    svc.start()
    pid, package = store.add(fw_package(fw_image("2.0.0", pad=200_000), version="2.0.0", sequence=2))
    registry.add_package(pid, str(store.path(pid)), package.manifest)
    offer = svc.offer("d1", pid, chunk=4096)
    got = []
    listener = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="listener")
    listener.on_message = lambda c, u, m: got.append(len(m.payload))
    listener.connect(mosquitto.host, mosquitto.port)
    listener.subscribe("fota/d1/data")
    listener.loop_start()
    try:
        wait_until(lambda: listener.is_connected(), 10, "listener")
        same = protocol.encode_get(offer, [0] * 16)  # one offset 16 times: served once
        listener.publish("fota/d1/get", same, qos=1).wait_for_publish(10)
        wait_until(lambda: svc.chunks_served == 1, 10, "one chunk")
        for _ in range(60):  # 60 requests of 16 chunks (3.75 MiB) in well under a second: the bucket holds 64 KiB
            listener.publish("fota/d1/get", protocol.encode_get(offer, list(range(0, 16 * 4096, 4096))), qos=0)
        wait_until(lambda: svc.stats.counts["rate_limited"] > 0, 10, "the rate limit")
    finally:
        listener.loop_stop()
        listener.disconnect()
        svc.stop()
        registry.close()
    assert svc.bytes_served <= (64 << 10) * 4 + 4096  # the burst plus what refilled while the test ran
    assert svc.chunks_served < 100


def test_a_requests_tokens_taken_at_once_are_what_one_allow_per_chunk_would_grant():
    # no refill to speak of (1 token a second): the burst alone decides
    together, one_by_one = inbound.RateLimit(1, 10 * 4096 + 100), inbound.RateLimit(1, 10 * 4096 + 100)
    assert together.take("d1", 4096, 16) == 10
    assert [one_by_one.allow("d1", 4096) for _ in range(16)] == [True] * 10 + [False] * 6
    assert together.take("d1", 4096, 16) == 0 and not one_by_one.allow("d1", 4096)  # both buckets spent alike
    assert together.take("d2", 4096, 3) == 3 and together.take("d2", 4096, 0) == 0  # each key its own bucket


def test_truncated_or_corrupted_packages_are_refused_before_they_are_stored(tmp_path):
    good = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2)
    zipped = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, encoding="zlib")
    store = PackageStore(tmp_path / "packages")
    flipped = bytearray(good)
    flipped[-100] ^= 1
    for bad in (good[:-1], good + b"\0", bytes(flipped), zipped[:-10]):
        with pytest.raises(PackageError, match="refused"):
            store.add(bad)
    assert not list((tmp_path / "packages").iterdir())
    store.add(good)
    store.add(zipped)


def test_packages_signed_by_an_untrusted_key_are_refused_when_the_server_has_trusted_keys(tmp_path):
    from host_tools.image.keys import generate_key

    other = generate_key(tmp_path / "other.pem")
    (tmp_path / "data" / "trusted").mkdir(parents=True)
    from simkit import session_signer

    (tmp_path / "data" / "trusted" / "release.pub").write_bytes(session_signer().public_key.to_pem())
    server = Server(ServerConfig(tmp_path / "data"))
    try:
        with pytest.raises(PackageError, match="unknown key"):
            server.add_package(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, signer=other))
        server.add_package(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2))
    finally:
        server.registry.close()


def test_a_dead_service_ends_the_server_with_a_non_zero_status(tmp_path, mosquitto):
    server = Server(ServerConfig(tmp_path / "data", broker_url=f"mqtt://{mosquitto.host}:{mosquitto.port}", coap_port=0))
    server.start()
    try:
        assert server.dead() == []
        server.mqtt._client.loop_stop()  # the network thread ends as an uncaught exception would end it
        with pytest.raises(ServiceDied) as died:
            server.supervise(interval=0.05)
        assert died.value.exit_code != 0 and "MQTT service" in died.value.message
    finally:
        server.stop()


def test_coap_posts_are_capped_and_typed(tmp_path):
    import aiocoap

    server = Server(ServerConfig(tmp_path / "data", coap_port=0))
    server.start()
    try:
        url = server.coap.url

        async def post(path: str, payload: bytes) -> aiocoap.Message:
            ctx = await aiocoap.Context.create_client_context()
            try:
                req = aiocoap.Message(code=aiocoap.POST, uri=f"{url}/fota/{path}", payload=payload)
                return await asyncio.wait_for(ctx.request(req).response, 60)
            finally:
                await ctx.shutdown()

        evil, d1 = Sealer(server.identities, "evil"), Sealer(server.identities, "d1")
        codes = {}
        for name, kind, payload in ATTACKS[:5]:
            codes[name] = asyncio.run(post(f"evil/{kind}", evil(kind, payload))).code
        big = asyncio.run(post("evil/state", evil("state", json.dumps(STATE | {"detail": "x" * 200_000}).encode())))
        ok = asyncio.run(post("d1/state", d1("state", json.dumps(STATE).encode())))
        assert all(not c.is_successful() for c in codes.values()), codes
        assert not big.code.is_successful() and ok.code.is_successful(), (big.code, ok.code)
        assert server.coap.alive() and server.registry.device("d1") and not server.registry.device("evil")
        assert server.coap.resource.stats.total() >= len(codes) + 1
    finally:
        server.stop()


def test_after_a_restart_every_open_offer_is_published_again(tmp_path):
    data = tmp_path / "data"
    first = Server(ServerConfig(data))
    first.start()
    offers = first.deploy(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2), ["d1", "d2"])
    first.registry.set_offer_status(offers[1], "SUCCEEDED")
    first.stop()
    second = Server(ServerConfig(data))  # a new embedded broker: nothing retained
    second.start()
    got: dict[str, bytes] = {}
    done = threading.Event()
    cred = second.identities.enroll("d1")
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="d1")
    c.username_pw_set(cred.user, cred.password)

    def on_message(client, userdata, msg):
        got[msg.topic] = msg.payload
        done.set()

    c.on_message = on_message
    c.connect(second.broker.host, second.broker.port)
    c.subscribe("fota/d1/offer", qos=1)
    c.loop_start()
    try:
        assert done.wait(20)
        wait_until(lambda: "fota/d1/offer" in got, 10, "d1's offer")
        assert protocol.decode_offer(got["fota/d1/offer"]).offer_id == offers[0]
        assert second.mqtt.republish_offers() == 1  # d2's offer had an outcome: not offered again
    finally:
        c.loop_stop()
        c.disconnect()
        second.stop()
