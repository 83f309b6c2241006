"""The server side of docs/PROTOCOL.md over any MQTT 3.1.1 broker (paho-mqtt).

Answers chunk requests from the package store, records every device's state and
events in the registry (queued to host_tools/server/reports.py, which takes them in batches),
publishes and clears retained offers.

    svc = MqttService(registry, store, "mqtt://127.0.0.1:1883")
    svc.start()
    svc.offer("a1b2c3", package_id)          # retained on fota/a1b2c3/offer

One of several workers (docs/DEPLOY.md; PostgreSQL and an external broker): `share="fota"` with a
client id of its own. Chunk requests come through the shared subscription `$share/fota/P/+/get`
(each to one worker; over MQTT 3.1.1 where the broker allows it, else MQTT 5: start() probes). Every worker receives every report, and the database lets exactly one take it
(Identities.open_reports in one transaction with what the reports change): a shared subscription would
lose the reports a worker had received but not acknowledged when it died (mosquitto 2.0 hands them to
no other member), and devices do not send a report twice.

Chunk requests have a connection and a network thread of their own (client id `<client_id>-chunks`): a
report's database transaction (an fsync) never holds up the chunks a downloading device waits for.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

from host_tools import protocol
from host_tools.server import inbound
from host_tools.server.identity import Identities
from host_tools.server.mqtt_client import MQTTv5, ServerError, paho_client, parse_broker_url, start_client
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Offer, Registry
from host_tools.server.reports import ReportTaker

OFFER_CACHE_S = 2.0  # how long a chunk request for an offer id the registry did not have is refused without asking again
OFFER_CACHE_MAX = 4096  # offers kept for chunk requests (the in-flight ones; more: the oldest read are dropped)
SHARE_PROBE_S = 3.0  # how long a worker waits for its probe of shared subscriptions over MQTT 3.1.1


def _no_delay(client) -> None:
    """Packets (chunks, PUBACKs) go out at once, not after the broker's delayed ACK (Nagle)."""
    sock = client.socket()
    if sock is not None and hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _acknowledged(info, deadline: float) -> bool:
    """True once the broker acknowledged a QoS 1 publish (paho's MQTTMessageInfo), waiting until `deadline`
    (time.monotonic()) at most; False when it was not sent (not connected, paho's queue full) or not acknowledged."""
    try:
        info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
    except (RuntimeError, ValueError):  # paho: not connected, or its queue is full
        return False
    return info.is_published()


class MqttService:
    """One paho client, its network thread, and the handlers for device topics."""

    def __init__(self, registry: Registry, store: PackageStore, broker_url: str, *, prefix: str = "fota",
                 client_id: str = "fota-server", serve: bool = True, ca_file: str | None = None,
                 serve_rate: float = 4 << 20, identities: Identities | None = None,
                 auth: tuple[str, str] | None = None, share: str | None = None) -> None:
        self.registry = registry
        self.store = store
        self.host, self.port, tls = parse_broker_url(broker_url)
        self.prefix = prefix
        self.serve = serve  # False: a CLI client that only publishes offers and commands
        self.share = share  # a shared-subscription group: one of several workers (MQTT 3.1.1 if the broker allows, else 5)
        self.bytes_served = 0
        self.chunks_served = 0
        self.serve_cpu_s = 0.0  # CPU time (this thread's) spent answering chunk requests: bench/mqtt.py divides it
        self._offers: dict[int, tuple[Offer | None, float]] = {}  # offer id -> (offer, when read): no SQL per request
        self.malformed = 0  # device messages that could not be parsed
        self.rejected = 0  # chunk requests for an unknown offer or for another device's offer
        self.stats = inbound.InboundStats("mqtt")  # what the network sent that was not acted on (a metric)
        self.serve_limit = inbound.RateLimit(serve_rate, serve_rate)  # payload bytes per second per device
        self._stopped = False
        self._connected = threading.Event()
        # reports are only recorded when a device's own key authenticates them (docs/SECURITY.md);
        # without `identities` (a client that only publishes offers) none are.
        self.identities = identities
        if auth is None and identities is not None:
            cred = identities.server_credentials()
            auth = (cred.user, cred.password)
        self._paho = (client_id, tls, ca_file, auth)
        self._probed = threading.Event()  # a worker's own probe came back through a shared subscription
        self._client = paho_client(client_id, tls, ca_file, self._connected, self._on_connect, self._on_message, auth)
        # chunk requests on a connection (and network thread) of their own: a batch of reports never holds them up
        self._chunks_connected = threading.Event()
        self._chunks = self._chunk_client(v5=False) if serve else None
        # reports are taken in batches by a thread of their own (host_tools/server/reports.py)
        self.reports = ReportTaker(registry, identities, on_final=self.settle_offers, refused=self._refused,
                                   failed=self.stats.failed) if serve and identities is not None else None

    def _chunk_client(self, v5: bool):
        client_id, tls, ca_file, auth = self._paho
        return paho_client(f"{client_id}-chunks", tls, ca_file, self._chunks_connected, self._on_chunks_connect,
                           self._on_chunk_request, auth, v5=v5)

    def start(self, timeout: float = 10) -> None:
        if self.reports is not None:
            self.reports.start()
        start_client(self._client, self.host, self.port, self._connected, timeout, ServerError, "the MQTT broker")
        if self.share and not self._probed.wait(SHARE_PROBE_S):  # the broker shares subscriptions with MQTT 5 only
            self._client.disconnect()
            self._client.loop_stop()
            self._connected.clear()
            self._client = paho_client(*self._paho[:3], self._connected, self._on_connect, self._on_message, self._paho[3], v5=True)
            start_client(self._client, self.host, self.port, self._connected, timeout, ServerError, "the MQTT broker")
            if self._chunks is not None:
                self._chunks = self._chunk_client(v5=True)
        if self._chunks is not None:
            try:
                start_client(self._chunks, self.host, self.port, self._chunks_connected, timeout, ServerError,
                             "the MQTT broker")
            except ServerError:
                self._client.disconnect()
                self._client.loop_stop()
                raise

    def alive(self) -> bool:
        """False once one of paho's network threads or the reports thread ended although stop() was not called
        (the service died)."""
        threads = [c._thread for c in (self._client, self._chunks) if c is not None]  # paho keeps no public handle
        reports = self.reports is None or self.reports.alive()
        return self._stopped or (all(t is not None and t.is_alive() for t in threads) and reports)

    def republish_offers(self) -> int:
        """Publish every device's newest offer without an outcome again (retained): after a restart,
        an embedded broker has lost them. Returns how many were published."""
        newest: dict[str, Offer] = {}
        for o in self.registry.offers():
            if o.status not in protocol.FINAL:
                newest[o.device] = o
        for o in newest.values():
            if self._publish_offer(o.device, o.id, o.chunk, o.policy, o.package):
                self.registry.mark_published(o.id)
        return len(newest)

    def republish_offer(self, offer_id: int) -> None:
        """Publish an open offer again (retained), as made, if it is still the device's newest open offer
        (an older one would replace the newer on the broker): its maker died before publishing it."""
        o = self.registry.offer(offer_id)
        open_ = [x.id for x in self.registry.offers(o.device) if x.status not in protocol.FINAL] if o else []
        if o is not None and open_ and open_[-1] == offer_id and not self._publish_offer(o.device, o.id, o.chunk, o.policy, o.package):
            return
        self.registry.mark_published(offer_id)

    def stop(self) -> None:
        self._stopped = True
        for client in (self._client, self._chunks):
            if client is not None:
                client.disconnect()
                client.loop_stop()
        if self.reports is not None:
            self.reports.stop()  # what was queued is taken (its offers settled: needs no connection)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        _no_delay(client)
        p = self.prefix
        if self.serve:
            client.subscribe([(f"{p}/+/state", 1), (f"{p}/+/events", 1)])
        if self.share and client.protocol != MQTTv5 and not self._probed.is_set():
            # MQTT 3.1.1 costs paho about half the CPU per message of MQTT 5 (bench/fleet.py); brokers that
            # give 3.1.1 clients shared subscriptions (mosquitto, EMQX, HiveMQ, VerneMQ) return this probe
            # through a group of this worker alone; others do not, and start() goes on with MQTT 5
            probe = self._probe_topic()
            client.subscribe(f"$share/{self._paho[0]}/{probe}", 1)
            client.publish(probe, b"", qos=1)
        self._connected.set()

    def _probe_topic(self) -> str:
        return f"{self.prefix}/{self._paho[0]}/share-probe"

    def _on_chunks_connect(self, client, userdata, flags, reason, properties) -> None:
        _no_delay(client)
        p = self.prefix
        client.subscribe(f"$share/{self.share}/{p}/+/get" if self.share else f"{p}/+/get", 0)
        self._chunks_connected.set()

    # The chunk connection's network thread: like _on_message, nothing a peer sends may raise out of here.
    def _on_chunk_request(self, client, userdata, msg) -> None:
        try:
            parsed = protocol.parse_topic(self.prefix, msg.topic)
            if parsed is None or parsed[1] != "get":
                return
            self._serve_chunks(inbound.device_id(parsed[0]), inbound.parse_get(msg.payload))
        except inbound.InboundError as exc:
            self.malformed += 1  # a malformed request serves nothing
            self.stats.refused("get", exc)
        except Exception as exc:  # noqa: BLE001 - the service outlives any one message (counted, logged)
            self.stats.failed("get", exc)

    # paho's network thread: nothing a peer sends may raise out of here (the thread would end).
    def _on_message(self, client, userdata, msg) -> None:
        kind = "topic"
        try:
            if self.share and msg.topic == self._probe_topic():
                self._probed.set()
                return
            parsed = protocol.parse_topic(self.prefix, msg.topic)
            if parsed is None:
                return
            device, kind = inbound.device_id(parsed[0]), parsed[1]
            if (kind == "events" or (kind == "state" and msg.payload)) and self.reports is not None:  # "": a cleared state
                self.reports.put(device, kind, bytes(msg.payload))  # taken with what it changes, in a batch
        except inbound.InboundError as exc:
            self._refused(kind, exc)
        except Exception as exc:  # noqa: BLE001 - the service outlives any one message (counted, logged)
            self.stats.failed(kind, exc)

    def _refused(self, kind: str, exc: Exception) -> None:
        self.malformed += 1  # a malformed message from a device changes nothing
        self.stats.refused(kind, exc)

    def _serve_chunks(self, device: str, req: inbound.ChunkRequest) -> None:
        started = time.thread_time()
        try:
            self._serve_from(device, req, self._cached_offer(req.offer_id))
        finally:
            self.serve_cpu_s += time.thread_time() - started

    # The offer a chunk request names, read from the registry once: what serving uses of it (device, package,
    # chunk size) never changes after it is made, and offers are never deleted, so a copy is as good as the row
    # however old (a status is not looked at: an ended offer is served as before, the device drops it itself).
    # An id the registry did not have is asked again after OFFER_CACHE_S (an offer another worker just made).
    def _cached_offer(self, offer_id: int) -> Offer | None:
        now = time.monotonic()
        hit = self._offers.get(offer_id)
        if hit is not None and (hit[0] is not None or now - hit[1] < OFFER_CACHE_S):
            return hit[0]
        if len(self._offers) >= OFFER_CACHE_MAX:  # offers of devices that went away: the oldest read first
            for key in list(self._offers)[: OFFER_CACHE_MAX // 4]:
                self._offers.pop(key, None)
        offer = self.registry.offer(offer_id)
        self._offers[offer_id] = (offer, now)
        return offer

    def _serve_from(self, device: str, req: inbound.ChunkRequest, offer: Offer | None) -> None:
        if offer is None or offer.device != device:
            self.rejected += 1
            return
        topic = protocol.topic(self.prefix, device, "data")
        # each offset once (at most MAX_REQUEST chunks per request), on a chunk boundary; the rate limit's
        # tokens for all of them taken at once, as many as it grants, in the order asked
        offsets = [offset for offset in dict.fromkeys(req.offsets) if not offset % offer.chunk]
        granted = self.serve_limit.take(device, offer.chunk, len(offsets))
        if granted < len(offsets):
            self.stats.rate_limited(device)
        for offset in offsets[:granted]:
            data = self.store.chunk(offer.package, offset, offer.chunk)
            if not data:
                continue
            self._chunks.publish(topic, protocol.encode_data(req.offer_id, offset, data), qos=0)
            self.bytes_served += len(data)
            self.chunks_served += 1

    # -- offers ---------------------------------------------------------------
    def offer(self, device: str, package_id: str, *, chunk: int = 4096, policy: str = "auto",
              record: Callable[[int], None] | None = None) -> int:
        """Record an offer and publish it retained, so an offline device gets it later.

        `record(offer_id)` runs in the transaction that records the offer (a campaign names it there):
        a worker that dies before the commit leaves neither, one that dies after it leaves an offer
        marked unpublished, which the next campaign tick publishes (republish_offer)."""
        return self.offer_many([(device, package_id)], chunk=chunk, policy=policy,
                               record=None if record is None else lambda ids: record(ids[0]))[0]

    def offer_many(self, offers: list[tuple[str, str]], *, chunk: int = 4096, policy: str = "auto",
                   record: Callable[[list[int]], None] | None = None) -> list[int]:
        """offer() for each (device, package id): recorded in one transaction (with `record(offer_ids)`), then all
        published, then the broker's acknowledgements awaited together and the acknowledged marked published
        in one statement. The offer ids, in order."""
        code = protocol.policy_code(policy)
        with self.registry.db.transaction():
            offer_ids = self.registry.create_offers(offers, chunk=chunk, policy=code, published=False)
            if record is not None:
                record(offer_ids)
        sent = [(offer_id, self._send_offer(device, offer_id, chunk, code, package_id))
                for (device, package_id), offer_id in zip(offers, offer_ids)]
        deadline = time.monotonic() + 10
        self.registry.mark_published_many([offer_id for offer_id, info in sent if _acknowledged(info, deadline)])
        return offer_ids

    def _publish_offer(self, device: str, offer_id: int, chunk: int, policy: int, package_id: str) -> bool:
        """Publish an offer retained; True once the broker acknowledged it (False: not connected, or no
        PUBACK within 10 s; the offer stays unpublished in the registry and a campaign tick tries again)."""
        return _acknowledged(self._send_offer(device, offer_id, chunk, policy, package_id), time.monotonic() + 10)

    def _send_offer(self, device: str, offer_id: int, chunk: int, policy: int, package_id: str):
        payload = protocol.encode_offer(offer_id, chunk, policy, self.store.offer_blob(package_id))
        return self._client.publish(protocol.topic(self.prefix, device, "offer"), payload, qos=1, retain=True)

    def push_key_list(self, device: str, raw: bytes, version: int) -> None:
        """A root-signed key list on the device's `keys` topic, retained (docs/PROTOCOL.md "Key lists"):
        the device keeps it if it verifies against its roots and is newer than the newest it has seen."""
        self._client.publish(protocol.topic(self.prefix, device, "keys"), raw, qos=1, retain=True).wait_for_publish(10)
        self.registry.note_sent(device, f"keylist {version}")

    def settle_offer(self, device: str) -> None:
        """An offer of `device` reached an outcome: retain its newest open offer if it has one (a newer offer
        made meanwhile must not be withdrawn with the old one), else clear the retained offer."""
        self.settle_offers([device])

    def settle_offers(self, devices: list[str]) -> None:
        """settle_offer for each of `devices` (a batch of reports'), their open offers read in one query."""
        open_ = self.registry.open_offers(devices)
        for device in devices:
            if device not in open_:
                self.clear_offer(device)
                continue
            o = open_[device][-1]
            self._client.publish(protocol.topic(self.prefix, device, "offer"),
                                 protocol.encode_offer(o.id, o.chunk, o.policy, self.store.offer_blob(o.package)), qos=1, retain=True)

    def clear_offer(self, device: str) -> None:
        self._client.publish(protocol.topic(self.prefix, device, "offer"), b"", qos=1, retain=True)

    def command(self, device: str, cmd: dict) -> None:
        self._client.publish(protocol.topic(self.prefix, device, "cmd"), json.dumps(cmd), qos=1).wait_for_publish(10)
        self.registry.note_sent(device, f"cmd {cmd.get('cmd')}")
