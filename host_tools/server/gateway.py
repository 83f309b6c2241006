"""`fota gateway`: CoAP devices on a local network, updated from a central MQTT fota server.

Upstream the gateway speaks the device side of docs/PROTOCOL.md AS each listed device: it
subscribes to `P/D/offer`, fetches each offered payload with `P/D/get` + `P/D/data` into a local
cache keyed by the payload's SHA-256 (once per digest, however many devices are offered it), and
relays the devices' state and events to `P/D/state` and `P/D/events`. Downstream it serves the
devices the resources of docs/COAP.md from that cache. It never signs or changes anything: the
offer goes to the device byte for byte, and the device checks signature and digest itself.

    gw = Gateway(GatewayConfig(upstream="mqtt://10.0.0.2:1883", data_dir=Path("gw"), devices=["a1b2"]))
    gw.start()          # CoAP on gw.coap.url
    ...
    gw.stop()
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import protocol
from host_tools.errors import FotaError
from host_tools.image.package import PackageError, parse_package
from host_tools.server import inbound
from host_tools.server.coap_service import ETAG_LEN, CoapService, Payload
from host_tools.server.mqtt_client import paho_client, parse_broker_url, start_client

MAX_OFFER_IDS = 256  # offer id -> digest mappings kept for serving payloads


class GatewayError(FotaError):
    """The upstream broker cannot be reached, or the gateway is misconfigured."""


@dataclass
class GatewayConfig:
    upstream: str  # mqtt://HOST:PORT (or mqtts://) of the central server's broker
    data_dir: Path  # the payload cache lives in data_dir/cache
    devices: list[str]
    prefix: str = "fota"
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683  # 0: a free port
    ca_file: str | None = None
    client_id: str | None = None  # None: its login (both brokers bind a gateway's client id to it), else "fota-gateway"
    auth: tuple[str, str] | None = None  # the gateway's broker login (fota gateway-enroll), (user, password)
    window: int = 16  # chunk requests outstanding upstream (one P/D/get carries at most 16)
    chunk_timeout_s: float = 2.0  # no data for this long: ask again for what is missing
    max_timeouts: int = 10  # then pause the fetch for retry_s
    retry_s: float = 30.0


@dataclass
class _Offer:
    device: str
    offer_id: int
    message: bytes  # the upstream offer payload, as received (OFR1 head + header + manifest + signature)
    digest: bytes  # SHA-256 of the payload (the manifest's encoded digest, or the image digest for raw)
    size: int
    done: bool = False  # the device reported an outcome: no longer offered downstream


@dataclass
class _Fetch:
    digest: bytes
    size: int
    chunk: int
    device: str  # the device the gateway asks as (the offer is that device's)
    offer_id: int
    got: set[int] = field(default_factory=set)
    asked: dict[int, float] = field(default_factory=dict)  # offset -> when asked
    last_data: float = 0.0
    timeouts: int = 0
    paused_until: float = 0.0
    failures: int = 0


class PayloadCache:
    """Verified payloads by digest (`<sha256>.bin`); fetches in progress are `.part` files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: bytes) -> Path:
        return self.root / f"{digest.hex()}.bin"

    def has(self, digest: bytes) -> bool:
        return self.path(digest).exists()

    def read(self, digest: bytes, offset: int, length: int) -> bytes:
        with open(self.path(digest), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def begin(self, digest: bytes, size: int) -> Path:
        part = self.path(digest).with_suffix(".part")
        with open(part, "wb") as f:
            f.truncate(size)
        return part

    def write(self, digest: bytes, offset: int, data: bytes) -> None:
        with open(self.path(digest).with_suffix(".part"), "r+b") as f:
            f.seek(offset)
            f.write(data)

    def commit(self, digest: bytes) -> bool:
        """Keep the .part file if its SHA-256 is `digest`; drop it otherwise."""
        part = self.path(digest).with_suffix(".part")
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while piece := f.read(1 << 16):
                h.update(piece)
        if h.digest() != digest:
            part.unlink(missing_ok=True)
            return False
        part.replace(self.path(digest))
        return True


class Gateway:
    """The upstream MQTT client, the payload cache, and the CoAP service for the devices."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.cache = PayloadCache(config.data_dir / "cache")
        self.devices = set(config.devices)
        self.offers: dict[str, _Offer] = {}  # device -> its current offer
        self.fetches: dict[bytes, _Fetch] = {}  # digest -> fetch in progress
        self.fetches_started = 0  # one per digest that was not in the cache
        self.bytes_fetched = 0
        self.stats = inbound.InboundStats("gateway")  # upstream messages refused or failed (a metric)
        # Test-only: called with the cache file of each payload once it is verified and kept, to
        # play a gateway that alters what it serves (the device must refuse the result).
        self.tamper_hook = None
        self._by_id: OrderedDict[int, tuple[bytes, int]] = OrderedDict()  # offer id -> (digest, size)
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        host, port, tls = parse_broker_url(config.upstream)
        self._host, self._port = host, port
        client_id = config.client_id or (config.auth[0] if config.auth else "fota-gateway")
        self._client = paho_client(client_id, tls, config.ca_file, self._connected, self._on_connect, self._on_message,
                                   config.auth)
        self.coap = CoapService(self, host=config.coap_host, port=config.coap_port, prefix=config.prefix)

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float = 10) -> None:
        start_client(self._client, self._host, self._port, self._connected, timeout, GatewayError, "the upstream MQTT broker")
        self.coap.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="gateway-fetch", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker:
            self._ticker.join(10)
        self.coap.stop()
        self._client.disconnect()
        self._client.loop_stop()

    def _topic(self, device: str, kind: str) -> str:
        return protocol.topic(self.config.prefix, device, kind)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        subs = []
        for d in sorted(self.devices):
            subs += [(self._topic(d, "offer"), 1), (self._topic(d, "data"), 0)]
        client.subscribe(subs)
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        parsed = protocol.parse_topic(self.config.prefix, msg.topic)
        if parsed is None or parsed[0] not in self.devices:
            return
        device, kind = parsed
        try:  # upstream messages; the devices' own reach the CoAP service, which counts what it refuses
            if kind == "offer":
                self._on_offer(device, msg.payload)
            elif kind == "data":
                self._on_data(msg.payload)
        except (ValueError, PackageError, OSError) as exc:
            self.stats.refused(kind, exc)
        except Exception as exc:  # noqa: BLE001 - paho's thread outlives any one message (counted, logged)
            self.stats.failed(kind, exc)

    # -- offers from upstream ----------------------------------------------------------
    def _on_offer(self, device: str, payload: bytes) -> None:
        with self._lock:
            if not payload:  # withdrawn upstream
                self.offers.pop(device, None)
                return
            offer = protocol.decode_offer(payload)
            if offer is None or offer.chunk == 0:
                return
            offer_id, chunk = offer.offer_id, offer.chunk
            current = self.offers.get(device)
            if current is not None and current.offer_id == offer_id:
                return
            m = parse_package(offer.blob).manifest  # only to learn the digest and size
            digest = m.encoded_sha256 or m.image_sha256
            size = m.encoded_size or m.image_size
            self.offers[device] = _Offer(device, offer_id, bytes(payload), digest, size)
            self._by_id[offer_id] = (digest, size)
            while len(self._by_id) > MAX_OFFER_IDS:
                self._by_id.popitem(last=False)
            if not self.cache.has(digest) and digest not in self.fetches:
                self.cache.begin(digest, size)
                self.fetches[digest] = _Fetch(digest, size, chunk, device, offer_id)
                self.fetches_started += 1
                self._ask(self.fetches[digest])

    # -- fetching payloads -----------------------------------------------------------------
    def _ask(self, f: _Fetch) -> None:
        now = time.monotonic()
        want = [o for o in range(0, f.size, f.chunk) if o not in f.got and o not in f.asked]
        room = self.config.window - len(f.asked)
        want = want[: max(0, min(room, protocol.MAX_REQUEST))]
        if not want:
            return
        for o in want:
            f.asked[o] = now
        self._client.publish(self._topic(f.device, "get"), protocol.encode_get(f.offer_id, want), qos=0)
        f.last_data = f.last_data or now

    def _on_data(self, payload: bytes) -> None:
        decoded = protocol.decode_data(payload)
        if decoded is None:
            return
        offer_id, offset, data = decoded
        with self._lock:
            f = next((f for f in self.fetches.values() if f.offer_id == offer_id), None)
            if f is None or offset % f.chunk or offset >= f.size or offset in f.got:
                return
            if len(data) != min(f.chunk, f.size - offset):
                return
            self.cache.write(f.digest, offset, data)
            f.got.add(offset)
            f.asked.pop(offset, None)
            f.last_data = time.monotonic()
            f.timeouts = 0
            self.bytes_fetched += len(data)
            if len(f.got) * f.chunk >= f.size:
                self._complete(f)
            else:
                self._ask(f)

    def _complete(self, f: _Fetch) -> None:
        del self.fetches[f.digest]
        if not self.cache.commit(f.digest):
            print(f"fota gateway: payload {f.digest.hex()[:16]} does not match its digest; fetching it again", flush=True)
            f.failures += 1
            if f.failures < 3:
                self.cache.begin(f.digest, f.size)
                self.fetches[f.digest] = _Fetch(f.digest, f.size, f.chunk, f.device, f.offer_id, failures=f.failures)
                self._ask(self.fetches[f.digest])
            return
        if self.tamper_hook is not None:
            self.tamper_hook(self.cache.path(f.digest))

    def _tick_loop(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for f in list(self.fetches.values()):
                    if now < f.paused_until or now - f.last_data < self.config.chunk_timeout_s:
                        continue
                    f.timeouts += 1
                    f.last_data = now
                    if f.timeouts > self.config.max_timeouts:
                        f.timeouts = 0
                        f.paused_until = now + self.config.retry_s
                        continue
                    f.asked.clear()  # ask again for everything outstanding
                    if self._connected.is_set():
                        self._ask(f)

    # -- the CoAP backend (host_tools.server.coap_service.Backend) ----------------------------
    def offer(self, device: str) -> bytes | None:
        with self._lock:
            o = self.offers.get(device)
            if o is None or o.done or not self.cache.has(o.digest):
                return None  # nothing offered, or the payload is not here yet
            return o.message

    def payload(self, offer_id: int) -> Payload | None:
        with self._lock:
            found = self._by_id.get(offer_id)
        if found is None or not self.cache.has(found[0]):
            return None
        digest, size = found
        return Payload(size, digest[:ETAG_LEN], lambda offset, n: self.cache.read(digest, offset, n))

    # Reports go upstream byte for byte: the device's MAC is checked by the server, never here
    # (the gateway has no device keys, so it can neither forge nor alter one: docs/SECURITY.md).
    def state(self, device: str, payload: bytes) -> None:
        if device in self.devices:
            self._client.publish(self._topic(device, "state"), payload, qos=1, retain=True)

    def event(self, device: str, payload: bytes) -> None:
        if device not in self.devices:
            return
        self._client.publish(self._topic(device, "events"), payload, qos=1)
        split = protocol.split_report(payload)
        try:
            event = json.loads(split[0]) if split else None  # unauthenticated here: only a hint for the cache
        except ValueError:
            event = None
        if isinstance(event, dict) and protocol.final_status(event) is not None:
            with self._lock:
                o = self.offers.get(device)
                if o is not None and o.offer_id == event.get("offer"):
                    o.done = True  # the server clears its offer too; until then, not offered again
