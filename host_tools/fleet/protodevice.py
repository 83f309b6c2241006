"""A protocol-level fota device in CPython: docs/PROTOCOL.md on the wire, no flash, no MicroPython.

`ProtoDevice` does what firmware/fota/mqtt_link.py and agent.py do with an offer: the manifest checks
before any chunk is asked for (same codes, same `failed` event), windows of chunk requests with
re-requests on timeout, both digests after the download, `downloading` / `progress` / `downloaded` /
`rebooting`, then `committed` or `rolled_back` after a simulated reboot, and the retained state JSON
with the firmware's keys. What it does after the download is its `behaviour`:

    "ok"              reboots, reports `committed`; version and sequence floor move on
    "fail-self-test"  reboots, reports `rolled_back` (22 SELF_TEST_FAILED, detail "app"); stays as it was
    "silent"          never answers an offer (the server has to time it out)
    "crash"           drops its connection mid-download, comes back later and resumes where it was

It holds no image: chunks are hashed (and inflated) in order, at most a window of them kept aside.
The network side (MQTT over asyncio, many devices per thread) is `ProtoFleet` in protofleet.py:

    spec = DeviceSpec("dev-0001", keys=(public_key,), version="1.0.0", seq=1, behaviour="crash")
    fleet = ProtoFleet("mqtt://127.0.0.1:1883", [spec]); fleet.start(); fleet.wait_connected(10)
    fleet.device("dev-0001").status()      # the state JSON it publishes
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache

from host_tools import firmware, protocol
from host_tools.image.keys import PublicKey
from host_tools.image.package import HEADER_SIZE, SIGNATURE_SIZE

# The firmware's own error table (firmware/fota/errors.py): codes, names, LwM2M results.
E = firmware.errors()
name, lwm2m_result = E.name, E.lwm2m_result

IDLE, DOWNLOADING, DOWNLOADED, UPDATING = 0, 1, 2, 3  # LwM2M Object 5 State
BEHAVIOURS = ("ok", "fail-self-test", "silent", "crash")
PROGRESS_BYTES = 65536  # a `progress` event per this much payload (the agent's journal interval), and at the end
MAX_EVENTS = 16  # events kept while offline (mqtt_link._MAX_EVENTS)
MAX_ERRORS = 8  # the persisted error log (store.MAX_ERRORS)
_APP_HEAD = 0x24  # image header + esp_app_desc_t magic: what the agent checks before the first flash write


class Refused(Exception):
    """An offer or a download the device turns down, with its firmware code."""

    def __init__(self, code: int, detail: str = "offer refused") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


@dataclass
class DeviceSpec:
    """One simulated device: identity, trusted keys, what it does with an update, and link timing."""

    id: str
    keys: tuple[PublicKey, ...] = ()  # trusted signing keys (none: every offer is UNKNOWN_KEY)
    board: str = "sim"
    hw_rev: str = "A"
    version: str = "1.0.0"
    seq: int = 0  # anti-rollback floor: an offer needs a greater sequence
    behaviour: str = "ok"
    chip_id: int = 0
    slot_size: int = 0x180000
    window: int = 8  # chunk requests outstanding at most
    chunk_timeout: float = 3.0  # no chunk for this long: ask again for everything outstanding
    max_timeouts: int = 8  # then the attempt ends with CONNECTION_LOST and is retried after a back-off
    retry_base: float = 2.0
    retry_cap: float = 300.0
    reboot_delay: float = 0.5  # reset -> boot -> self-test -> connected again
    crash_after: float = 0.5  # "crash": drop the link once this fraction of the payload is in
    crash_delay: float = 1.0  # ... and come back after this long
    loss: float = 0.0  # drop this fraction of arriving chunks (a lossy link; seeded by the id)
    key: bytes = b""  # the report key from enrolment (docs/SECURITY.md); empty: reports go unauthenticated
    password: str = ""  # the broker password (username = id); empty: no login


def enroll(specs: list[DeviceSpec], identities) -> list[DeviceSpec]:
    """Give each spec its own credentials from `identities` (host_tools.server.identity.Identities), as
    `fota provision` gives a real device (the same specs, with key and password set)."""
    out = []
    for spec in specs:
        cred = identities.enroll(spec.id)
        out.append(replace(spec, key=cred.key, password=cred.password))
    return out


@lru_cache(maxsize=256)
def _signature_ok(raw: bytes, signature: bytes, signed: bytes) -> bool:
    # A fleet verifies the same offer many times: one Ed25519 verification per (key, package).
    return PublicKey(raw).verify(signature, signed)


def check_offer(blob: bytes, spec: DeviceSpec, seq_floor: int, version: str, now: float | None):
    """docs/FORMAT.md "Device checks, in order" on header + manifest + signature; raises Refused.

    Header, manifest and device checks are firmware/fota/manifest.py's; only the signature goes
    through pyca (the same verdicts, tested in tests/test_ed25519.py, at fleet speed).
    """
    fm = firmware.manifest()  # the device's own manifest rules: refused exactly as a device refuses, same codes
    try:
        mlen, key_id = fm.parse_header(bytes(blob[:HEADER_SIZE]))
        end = HEADER_SIZE + mlen
        if len(blob) < end + SIGNATURE_SIZE:
            raise Refused(E.MANIFEST_SIZE)
        candidates = [k for k in spec.keys if k.key_id == key_id]
        if not candidates:
            raise Refused(E.UNKNOWN_KEY)
        signature = bytes(blob[end : end + SIGNATURE_SIZE])
        if not any(_signature_ok(k.raw, signature, bytes(blob[:end])) for k in candidates):
            raise Refused(E.BAD_SIGNATURE)
        m = fm.parse_manifest(bytes(blob[HEADER_SIZE:end]))
        fm.check_device(m, fm.Device(spec.board, spec.chip_id, spec.hw_rev, seq_floor, version, now), spec.slot_size)
    except E.OtaError as e:
        raise Refused(e.code) from None
    return m


class ProtoDevice:
    """The device's side of the protocol. The transport sets `link` (publish) and `host` (drop).

    Called by the transport, all from one thread: on_connect(), on_disconnect(), on_message(topic,
    payload), tick(now), power_on() (before reconnecting after a reboot). Counters: gets (chunk request
    messages), chunks and bytes_in (chunk messages taken), duplicates, rerequests (chunk timeouts), lost
    (dropped by `loss`), events_sent, offers_ignored ("silent"), crashes, foreign (others' topics).
    """

    def __init__(self, spec: DeviceSpec, prefix: str = "fota", clock=time.time) -> None:
        if spec.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour {spec.behaviour!r} is not one of {', '.join(BEHAVIOURS)}")
        self.spec = spec
        self.id = spec.id
        self.counter = 0  # the report counter (a simulated device never loses it)
        self.clock = clock  # Unix time (expiry, the error log)
        t = {kind: protocol.topic(prefix, spec.id, kind).encode() for kind in protocol.TOPICS}
        self.t_state, self.t_events, self.t_get = t["state"], t["events"], t["get"]
        self.t_offer, self.t_data, self.t_cmd = t["offer"], t["data"], t["cmd"]
        self._handlers = {self.t_offer: self._on_offer, self.t_data: self._on_data, self.t_cmd: self._on_cmd}
        self.version, self.seq, self.slot = spec.version, spec.seq, "ota_0"
        self.state, self.result, self.code, self.detail = IDLE, 0, 0, None
        self.errors: list[list] = []
        self.offer_id: int | None = None
        self.done: list[int] = []  # offers with an outcome: never tried again, even while retained
        self.link = None  # while connected: .publish(topic, payload, qos, retain)
        self.host = None  # the transport: .drop(device, delay, graceful)
        self.queue: list[dict] = []  # events not sent yet (bounded, oldest dropped)
        self.gets = self.chunks = self.bytes_in = self.duplicates = self.rerequests = self.lost = 0
        self.events_sent = self.offers_ignored = self.crashes = self.foreign = 0
        self._rng = random.Random(spec.id)
        self._m = None  # the offer's manifest, as firmware/fota/manifest.py parsed it
        self._pending: tuple[str, int, int] | None = None  # (version, seq, offer) across the reboot
        self._retry_at: float | None = None
        self._retries = 0

    # -- reporting ------------------------------------------------------------
    def status(self) -> dict:
        """The retained state JSON (PROTOCOL.md "Reported state")."""
        progress = None
        if self.state == DOWNLOADING and self._m is not None:
            progress = [self._have(), -(-self._m.encoded_size // self._chunk)]
        return {"id": self.id, "board": self.spec.board, "hw_rev": self.spec.hw_rev, "version": self.version,
                "seq": self.seq, "slot": self.slot, "state": self.state, "progress": progress, "result": self.result,
                "code": self.code, "detail": self.detail, "offer": self.offer_id, "errors": self.errors}

    def report(self, event: str, offer: int | None = None, **info) -> None:
        self.queue.append({"event": event, "offer": self.offer_id if offer is None else offer, **info})
        del self.queue[:-MAX_EVENTS]
        self.flush()

    def flush(self) -> None:
        if self.link is None:
            return
        while self.queue:
            self.link.publish(self.t_events, self._sealed("events", json.dumps(self.queue.pop(0)).encode()), 1, False)
            self.events_sent += 1
        self.publish_state()

    def publish_state(self) -> None:
        if self.link is not None:
            self.link.publish(self.t_state, self._sealed("state", json.dumps(self.status()).encode()), 1, True)

    def _sealed(self, kind: str, body: bytes) -> bytes:
        """The report with the device's MAC and next counter (docs/PROTOCOL.md "Authenticated reports")."""
        if not self.spec.key:
            return body
        self.counter += 1
        return protocol.seal_report(self.spec.key, self.id, kind, self.counter, body)

    def _fail(self, code: int, detail: str) -> None:
        self.errors = (self.errors + [[code, detail, int(self.clock())]])[-MAX_ERRORS:]
        self.result, self.code, self.detail = lwm2m_result(code), code, detail
        self.state = IDLE
        self.report("failed", code=code, name=name(code), detail=detail)

    def _mark_done(self, offer_id: int | None) -> None:
        if offer_id is not None and offer_id not in self.done:
            self.done = (self.done + [offer_id])[-8:]

    # -- connection -----------------------------------------------------------
    def on_connect(self) -> None:
        self.flush()  # events from before the reboot or the outage, then the state
        if self.state == DOWNLOADING:
            self._inflight = []
            self._request()  # resume where the download stopped

    def on_disconnect(self) -> None:
        self.link = None

    def power_on(self) -> None:
        """Boot after a reset: the new image commits, or fails its self-test and is rolled back."""
        pending, self._pending = self._pending, None
        self.state, self.offer_id, self._m = IDLE, None, None
        if pending is None:
            return
        version, seq, offer = pending
        self._mark_done(offer)
        if self.spec.behaviour == "fail-self-test":
            self.errors = (self.errors + [[E.SELF_TEST_FAILED, "app", int(self.clock())]])[-MAX_ERRORS:]
            self.result, self.code, self.detail = E.LWM2M_FAILED, E.SELF_TEST_FAILED, "rolled back: app"
            self.report("rolled_back", offer, version=version, code=E.SELF_TEST_FAILED, name=name(E.SELF_TEST_FAILED),
                        detail="app")
            return
        self.version, self.seq = version, max(self.seq, seq)
        self.slot = "ota_1" if self.slot == "ota_0" else "ota_0"
        self.result, self.code, self.detail = E.LWM2M_SUCCESS, 0, "committed"
        self.report("committed", offer, version=version, seq=seq)

    def on_message(self, topic: bytes, payload: bytes) -> None:
        handler = self._handlers.get(topic)  # exact topics only: never act on another device's messages
        if handler is not None:
            handler(payload)
        else:
            self.foreign += 1  # amqtt 0.12 sends every new client the retained messages of everyone's subscriptions

    # -- offers ---------------------------------------------------------------
    def _on_offer(self, payload: bytes) -> None:
        if not payload:  # withdrawn
            if self.offer_id is not None and self.state == DOWNLOADING:
                self._fail(E.CANCELLED, "cancelled")
            self.offer_id, self._retry_at = None, None
            return
        offer = protocol.decode_offer(payload)
        if offer is None:
            return
        offer_id = offer.offer_id
        if offer_id == self.offer_id or offer_id in self.done:
            return
        if self.spec.behaviour == "silent":
            self.offers_ignored += 1
            return
        if self.state in (DOWNLOADING, UPDATING):
            self.report("failed", offer_id, code=E.BUSY, name=name(E.BUSY), detail="offer refused")
            self._mark_done(offer_id)
            return
        self.offer_id, self._blob, self._chunk = offer_id, offer.blob, offer.chunk
        self._policy = protocol.policy_name(offer.policy)
        self._approved, self._crashed, self._retries = False, False, 0
        self._start_attempt(fresh=True)

    def _start_attempt(self, fresh: bool) -> None:
        self._retry_at = None
        self._timeouts = 0
        try:
            if not 0 < self._chunk <= protocol.MAX_CHUNK:
                raise Refused(E.CHUNK_RANGE)
            m = check_offer(self._blob, self.spec, self.seq, self.version, self.clock())
        except Refused as e:
            self._fail(e.code, e.detail)
            self._mark_done(self.offer_id)
            return
        if fresh or self._m is None:  # a retry of the same offer keeps what is in (RAM, here)
            self._m, self._next, self._ahead, self._fresh = m, 0, {}, 0
            self._sha = hashlib.sha256()
            self._img_sha = hashlib.sha256() if m.encoding == 1 else self._sha
            self._inflater = zlib.decompressobj(m.zlib_wbits) if m.encoding == 1 else None
            self._decoded, self._head = 0, b""
        self._inflight: list[int] = []
        self._started = self._last_data = time.monotonic()
        self.state = DOWNLOADING
        self.report("downloading", version=m.version, size=m.encoded_size, have=self._have())
        self._request()

    def _have(self) -> int:
        return -(-self._next // self._chunk) + len(self._ahead)

    # -- chunks ---------------------------------------------------------------
    def _request(self) -> None:
        if self.link is None or self.state != DOWNLOADING:
            return
        room = self.spec.window - len(self._inflight)
        size, step, offset = self._m.encoded_size, self._chunk, self._next
        first_only = self._m.encoding == 0 and offset == 0  # nothing goes further before chunk 0 was checked
        want: list[int] = []
        while len(want) < room and offset < size:
            if offset not in self._ahead and offset not in self._inflight:
                want.append(offset)
            if first_only:
                break
            offset += step
        if not want:
            return
        want = want[: protocol.MAX_REQUEST]
        self.link.publish(self.t_get, protocol.encode_get(self.offer_id, want), 0, False)
        self.gets += 1
        self._inflight.extend(want)
        self._last_data = time.monotonic()

    def _on_data(self, payload: bytes) -> None:
        decoded = protocol.decode_data(payload) if self.state == DOWNLOADING else None
        if decoded is None or decoded[0] != self.offer_id:
            return
        _, offset, data = decoded
        length = len(data)
        if self.spec.loss and self._rng.random() < self.spec.loss:
            self.lost += 1
            return
        self._last_data = time.monotonic()
        self._timeouts = 0
        self.chunks += 1
        self.bytes_in += length
        if offset in self._inflight:
            self._inflight.remove(offset)
        size = self._m.encoded_size
        if offset % self._chunk or offset >= size or length != min(self._chunk, size - offset):
            return self._give_up(E.CHUNK_RANGE, f"chunk at {offset}")
        try:
            if offset == self._next:
                self._consume(data)
                while self._next in self._ahead:
                    self._consume(self._ahead.pop(self._next))
            elif offset > self._next and offset not in self._ahead:
                self._ahead[offset] = data
            else:
                self.duplicates += 1
        except Refused as e:
            return self._give_up(e.code, e.detail)
        if self._next >= size:
            return self._complete()
        if self.spec.behaviour == "crash" and not self._crashed and self._next >= self.spec.crash_after * size:
            self._crashed = True
            self.crashes += 1
            return self.host.drop(self, self.spec.crash_delay, graceful=False)
        if len(self._inflight) <= self.spec.window // 2:
            self._request()

    def _consume(self, data: bytes) -> None:
        # The next chunk in order: hash it, inflate it, check the image header once it is there.
        self._sha.update(data)
        self._next += len(data)
        if self._inflater is not None:
            try:
                data = self._inflater.decompress(data)
            except zlib.error:
                raise Refused(E.INFLATE, f"chunk at {self._next - len(data)}") from None
            self._img_sha.update(data)
        self._decoded += len(data)
        if len(self._head) < _APP_HEAD:
            self._head += data[: _APP_HEAD - len(self._head)]
            h = self._head
            if len(h) >= _APP_HEAD and (h[0] != 0xE9 or h[1] > 16 or h[12] | h[13] << 8 != self.spec.chip_id
                                        or h[0x20:0x24] != b"\x32\x54\xcd\xab"):
                raise Refused(E.BAD_IMAGE, "chunk at 0")
        if self._decoded > self._m.image_size:
            raise Refused(E.INFLATE, "longer than image_size")
        self._fresh += len(data)
        if self._fresh >= PROGRESS_BYTES or self._next >= self._m.encoded_size:
            self._fresh = 0
            self.report("progress", have=self._have(), total=-(-self._m.encoded_size // self._chunk))

    def _give_up(self, code: int, detail: str) -> None:
        self._fail(code, detail)  # reported with the state; the offer is never tried again
        self._mark_done(self.offer_id)

    def _complete(self) -> None:
        m = self._m
        if self._inflater is not None:
            tail = self._inflater.flush()
            self._img_sha.update(tail)
            self._decoded += len(tail)
            if not self._inflater.eof or self._decoded != m.image_size:
                return self._give_up(E.INFLATE, "verify")
            if self._sha.digest() != m.encoded_sha256:
                return self._give_up(E.ENCODED_DIGEST, "verify")
        if self._decoded != m.image_size or self._img_sha.digest() != m.image_sha256:
            return self._give_up(E.DIGEST_MISMATCH, "verify")
        self.state = DOWNLOADED
        self.report("downloaded", version=m.version, ms=int((time.monotonic() - self._started) * 1000))
        if self._policy == "auto" or self._approved:
            self._install()

    def _install(self) -> None:
        m = self._m
        self._pending = (m.version, m.sequence, self.offer_id)
        self.state = UPDATING
        self.report("rebooting", version=m.version)
        self.host.drop(self, self.spec.reboot_delay, graceful=True)  # power_on() runs before it reconnects

    # -- commands and time ------------------------------------------------------
    def _on_cmd(self, payload: bytes) -> None:
        try:
            cmd = json.loads(payload)
        except ValueError:
            return
        if not isinstance(cmd, dict) or cmd.get("offer") not in (None, self.offer_id) or self.offer_id is None:
            return
        if cmd.get("cmd") == "approve":
            self._approved = True
            if self.state == DOWNLOADED:
                self._install()
        elif cmd.get("cmd") == "cancel" and self.state in (DOWNLOADING, DOWNLOADED):
            self._give_up(E.CANCELLED, "cancelled")

    @property
    def busy(self) -> bool:
        """Something for tick() to do: a download in progress or a retry due."""
        return self.state == DOWNLOADING or self._retry_at is not None

    def tick(self, now: float) -> None:
        """Chunk timeouts and retries (`now` is time.monotonic())."""
        if self._retry_at is not None and now >= self._retry_at and self.link is not None:
            return self._start_attempt(fresh=False)
        if self.state != DOWNLOADING or self.link is None or now - self._last_data < self.spec.chunk_timeout:
            return
        self._timeouts += 1
        if self._timeouts > self.spec.max_timeouts:
            self._fail(E.CONNECTION_LOST, f"no data after {self.spec.max_timeouts} requests")
            cap = min(self.spec.retry_cap, self.spec.retry_base * 2 ** self._retries)
            self._retries += 1
            self._retry_at = now + self._rng.uniform(0, cap)
            return
        self.rerequests += 1
        self._inflight = []  # ask again for everything outstanding
        self._request()
