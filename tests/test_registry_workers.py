"""What several workers on one registry rely on, on SQLite and PostgreSQL: reports taken once in any
order, campaigns moved by one holder of the lock at a time, packages found through the database."""

from __future__ import annotations

import json
import threading

import pytest

from host_tools import protocol
from host_tools.server.identity import REPLAY_WINDOW, Identities
from host_tools.server.registry import Registry
from host_tools.server.workers import CampaignLock, SharedPackageStore
from simkit import app_image, fw_package

pytestmark = pytest.mark.host


@pytest.fixture
def regs(registry_target):
    """Two registries on one database: two workers (on SQLite, two handles in one process)."""
    a, b = Registry(registry_target), Registry(registry_target)
    yield a, b
    a.close()
    b.close()


def _sealed(key: bytes, device: str, kind: str, counter: int, body: dict) -> bytes:
    return protocol.seal_report(key, device, kind, counter, json.dumps(body).encode())


def test_reports_out_of_order_are_taken_once_each_and_old_states_never_undo_new(regs):
    a, b = regs
    ids_a, ids_b = Identities(a), Identities(b)
    key = ids_a.enroll("d1").key
    ev = {"event": "progress", "offer": 1}
    assert ids_a.open_report("d1", "state", _sealed(key, "d1", "state", 100, {"v": 100}))
    assert ids_b.open_report("d1", "events", _sealed(key, "d1", "events", 99, ev))  # overtaken, not seen: taken
    assert ids_a.open_report("d1", "events", _sealed(key, "d1", "events", 99, ev)) is None  # seen: a replay (one worker)
    assert ids_b.open_report("d1", "state", _sealed(key, "d1", "state", 98, {"v": 98})) is None  # would undo state 100
    old = 100 - REPLAY_WINDOW
    assert ids_a.open_report("d1", "events", _sealed(key, "d1", "events", old, ev)) is None  # outside the window
    assert ids_a.replayed + ids_b.replayed == 3
    workers = Identities(b, shared=True)  # every worker gets every report: another's copy is no replay
    assert workers.open_report("d1", "events", _sealed(key, "d1", "events", 99, ev)) is None and workers.replayed == 0


def test_the_replay_window_takes_each_counter_once_across_a_jump_and_after_an_upgrade(regs):
    a, _ = regs
    ids = Identities(a)
    key = ids.enroll("d1").key

    def report(n: int) -> bytes | None:
        return ids.open_report("d1", "events", _sealed(key, "d1", "events", n, {"event": "progress"}))

    assert report(10)
    assert all(report(n) for n in (5, 9, 7))  # below the newest, never taken: taken now
    assert not any(report(n) for n in (5, 9, 7, 10))  # each once
    newest = 10 + REPLAY_WINDOW + 5
    assert report(newest)  # a jump past the whole window
    assert report(newest - 3) and report(newest - 3) is None  # in the window, not taken before it
    assert report(newest - REPLAY_WINDOW) is None  # below the window
    # a registry from before the bitmap (NULL): every counter up to the newest counts as taken
    a.db.execute("UPDATE identities SET seen = NULL, state_counter = NULL WHERE id = 'd1'")
    assert report(newest - 1) is None
    assert report(newest + 2) and report(newest + 1) and report(newest + 1) is None


def test_a_batch_of_reports_is_written_as_the_same_reports_one_by_one(regs):
    a, _ = regs
    image = "ab" * 32
    a.record_states([("d1", {"board": "sim", "seq": 1}), ("d1", {"board": "sim", "seq": 2, "image": image}),
                     ("d2", {"board": "sim", "seq": 7}), ("d1", {"board": "sim", "seq": 3})])
    assert (a.device("d1")["seq"], a.device("d2")["seq"], a.running_image("d1")) == (3, 7, image)
    mine, other = a.create_offer("d1", "p", chunk=4096, policy=0), a.create_offer("d2", "p", chunk=4096, policy=0)
    finals = a.record_events([("d1", {"event": "downloaded", "offer": mine}),
                              ("d1", {"event": "committed", "offer": mine, "downtime_ms": 40}),
                              ("d1", {"event": "committed", "offer": other}),  # another device's offer: changes nothing
                              ("d1", {"event": "failed", "offer": mine, "code": 1}),  # after the outcome: stays SUCCEEDED
                              ("d1", {"event": "booted"})])
    assert finals == [None, "SUCCEEDED", None, "REFUSED", None] and a.foreign_events == 1  # as one by one: the event's
    assert (a.offer(mine).status, a.offer(mine).downtime_ms, a.offer(other).status) == ("SUCCEEDED", 40, "OFFERED")
    assert [e["event"] for e in a.events("d1")] == ["downloaded", "committed", "committed", "failed", "booted"]


def test_a_lost_committed_event_is_made_good_by_the_state_that_reports_the_new_image(regs):
    """A reset right after the commit loses the `committed` event (it lives in the device's RAM until sent): the
    next state, which names the running image, settles the INSTALLING offer of that image, and only that one."""
    import types

    a, b = regs
    new, old = "cd" * 32, "ef" * 32
    for pid, sha in (("pnew", new), ("pold", old)):
        a.add_package(pid, f"/x/{pid}", types.SimpleNamespace(version="2.0.0", sequence=2, board="sim", hw_revs=("A",),
                                                              image_size=1, encoded_size=1, encoding_name="raw",
                                                              image_sha256=bytes.fromhex(sha)))
    mine = a.create_offer("d1", "pnew", chunk=4096, policy=0)
    other = a.create_offer("d2", "pnew", chunk=4096, policy=0)
    a.record_events([("d1", {"event": "rebooting", "offer": mine}), ("d2", {"event": "rebooting", "offer": other})])
    assert a.record_states([("d2", {"board": "sim", "seq": 1, "image": old})]) == []  # rolled back: not its image
    assert a.record_states([("d1", {"board": "sim", "seq": 2, "image": new})]) == ["d1"]
    assert (a.offer(mine).status, a.offer(other).status) == ("SUCCEEDED", "INSTALLING")
    assert b.record_states([("d1", {"board": "sim", "seq": 2, "image": new})]) == []  # once (another worker, again)
    a.record_events([("d1", {"event": "committed", "offer": mine, "downtime_ms": 30})])  # the event after all: its downtime
    assert (a.offer(mine).status, a.offer(mine).downtime_ms) == ("SUCCEEDED", 30)


def test_campaign_lock_has_one_holder_and_waits_for_it(regs):
    a, b = regs
    la, lb = CampaignLock(a.db), CampaignLock(b.db)
    with la.attempt() as mine:
        assert mine
        got: list[bool] = []
        t = threading.Thread(target=lambda: got.append(lb.attempt().__enter__()))  # another worker's ticker
        t.start()
        t.join(10)
        assert got == [False]
    with lb.attempt() as mine:
        assert mine
    with la:  # an operator action
        pass


def test_a_package_stored_by_one_worker_is_served_by_another(regs, tmp_path):
    a, b = regs
    pid, _ = SharedPackageStore(tmp_path / "w1", a.db).add(fw_package(app_image("2.0.0"), version="2.0.0", sequence=2))
    other = SharedPackageStore(tmp_path / "w2", b.db)
    assert other.chunk(pid, 0, 16) and other.offer_blob(pid)


def test_a_worker_refuses_to_start_without_postgresql_and_a_broker(tmp_path):
    from host_tools.errors import FotaError
    from host_tools.server.service import Server, ServerConfig

    with pytest.raises(FotaError, match="PostgreSQL registry and an external broker"):
        Server(ServerConfig(tmp_path, worker="w1", broker_url="mqtt://127.0.0.1:1883"))  # SQLite: one process only


@pytest.mark.parametrize("batched", [False, True], ids=["offer", "offer_many"])
def test_a_campaign_offer_that_was_never_published_is_published_by_the_next_tick_and_never_made_twice(regs, tmp_path, mosquitto,
                                                                                                    batched):
    """The offer and the campaign row that names it commit together; the publish comes after. A worker that
    cannot publish (here the broker is down; in test_workers.py it is killed) leaves the offer named and marked
    unpublished, and the next tick, in any worker, publishes that offer: no second offer, whatever the device did.
    Alike whether the runner offers one at a time or a page at once (`fota serve`: MqttService.offer_many)."""
    import paho.mqtt.client as mqtt

    from host_tools.fleet.campaign import CampaignRunner, CampaignSpec
    from host_tools.server.mqtt_service import MqttService
    from mqttkit import wait_until

    a, b = regs
    store_a = SharedPackageStore(tmp_path / "w1", a.db)
    pid, parsed = store_a.add(fw_package(app_image("2.0.0"), version="2.0.0", sequence=2))
    a.add_package(pid, str(store_a.path(pid)), parsed.manifest)
    a.record_state("d1", {"board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1})
    a.set_groups("d1", ["field"])

    def worker(reg, store, name):
        svc = MqttService(reg, store, mosquitto.url, client_id=name, serve=False)
        svc.start()
        return svc, CampaignRunner(reg, offer=svc.offer, withdraw=svc.clear_offer, republish=svc.republish_offer,
                                   offer_many=svc.offer_many if batched else None)

    svc_a, runner_a = worker(a, store_a, "wa")
    runner_a.create(CampaignSpec(name="c", package=pid, waves=["100%"]))
    runner_a.start("c")
    mosquitto.stop()
    wait_until(lambda: not svc_a._client.is_connected(), 10, "worker a to see the broker gone")
    runner_a.tick()
    [offer] = a.offers("d1")
    row = a.campaign_devices("c")[0]
    assert (row["status"], row["offer"], row["attempts"]) == ("OFFERED", offer.id, 1)
    assert [o.id for o in b.unpublished_offers()] == [offer.id]

    mosquitto.start()
    seen: list[bytes] = []
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="d1")
    dev.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    dev.connect(mosquitto.host, mosquitto.port)
    dev.subscribe("fota/d1/offer", 1)
    dev.loop_start()
    svc_b, runner_b = worker(b, SharedPackageStore(tmp_path / "w2", b.db), "wb")
    try:
        runner_b.tick()
        got = wait_until(lambda: seen and protocol.decode_offer(seen[-1]), 10, "the retained offer")
        assert got.offer_id == offer.id and b.unpublished_offers() == []
        b.set_offer_status(offer.id, "SUCCEEDED")  # the device installs it at once, before any other tick
        runner_b.tick()
        runner_a.tick()
        assert [o.id for o in b.offers("d1")] == [offer.id]
        assert b.campaign_devices("c")[0]["status"] == "SUCCEEDED" and b.campaign("c")["status"] == "COMPLETED"
    finally:
        dev.loop_stop()
        dev.disconnect()
        for svc in (svc_a, svc_b):
            svc.stop()


def _start_at_once(url: str, n: int, root) -> list[str]:
    """`n` threads open a registry and a shared package store on `url` at the same moment; their errors."""
    start, errors, opened = threading.Barrier(n), [], []

    def worker(i: int) -> None:
        start.wait()
        try:
            reg = Registry(url)
            opened.append(reg)
            SharedPackageStore(root / str(i), reg.db)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for reg in opened:
        reg.close()
    return errors


def test_workers_that_start_at_once_on_a_fresh_postgresql_database_all_start(postgres_server, tmp_path):
    """Each worker creates the tables it needs (CREATE TABLE IF NOT EXISTS); at once, two of them raced in
    PostgreSQL's catalog (UniqueViolation on pg_type) and one worker died at start (seen in test_workers.py)."""
    from pgcluster import fresh_database

    for attempt in range(4):
        assert _start_at_once(fresh_database(postgres_server), 6, tmp_path / str(attempt)) == []


def test_workers_share_chunk_requests_over_mqtt_311_when_the_broker_allows_it(regs, tmp_path, mosquitto):
    """mosquitto gives MQTT 3.1.1 clients shared subscriptions (the start-up probe comes back), and MQTT 3.1.1
    costs paho less CPU per message than 5: each worker's chunk requests are its share, not all of them."""
    import paho.mqtt.client as mqtt

    from host_tools.server.mqtt_service import MqttService
    from mqttkit import wait_until

    workers = [MqttService(reg, SharedPackageStore(tmp_path / name, reg.db), mosquitto.url, client_id=name, share="fota")
               for reg, name in zip(regs, ("wa", "wb"))]
    for w in workers:
        w.start()
    try:
        assert [w._client.protocol for w in workers] == [mqtt.MQTTv311] * 2
        dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="d1")
        dev.connect(mosquitto.host, mosquitto.port)
        dev.loop_start()
        for n in range(20):  # requests for an offer nobody made: each refused by the one worker that got it
            dev.publish("fota/d1/get", protocol.encode_get(n + 1, [0]), qos=0)
        wait_until(lambda: sum(w.rejected for w in workers) == 20, 10, "every request answered once")
        assert all(0 < w.rejected < 20 for w in workers)
        dev.loop_stop()
        dev.disconnect()
    finally:
        for w in workers:
            w.stop()
