"""The update agent: offer -> chunks -> verify -> install, and what it reports.

Transports (a local file, MQTT, CoAP) push what they receive; the agent decides
what goes to flash. Nothing is erased before the manifest passed every check and
the first chunk is an app image for this chip; every chunk goes where it belongs;
the image is hashed again from flash before `set_boot()`.

    agent = Agent(Identity("sim", 0, "A", "1.0.0"), trusted_keys.KEYS)
    agent.boot()                                  # confirm or roll back a new image (fota.confirm)
    agent.offer(header_manifest_signature, chunk=4096)
    for offset in agent.wanted(8):
        agent.on_chunk(offset, memoryview(data))
    agent.finish()                                # digests, then install per policy (resets)
"""

import json
import time

try:
    import esp32
    import machine
except ImportError:  # CPython: importable for tests and tools; the board supplies both
    esp32 = machine = None

from . import confirm, errors, manifest, otadata, store
from .errors import OtaError
from .slot import SECTOR, SlotWriter

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# LwM2M Object 5 "State" (resource 3)
IDLE = const(0)
DOWNLOADING = const(1)
DOWNLOADED = const(2)
UPDATING = const(3)
_MARGIN = const(1024)  # inflate.MARGIN: input kept ahead of the decoder
_JOURNAL_BYTES = const(65536)  # persist the chunk bitmap after this much new data
_APP_MAGIC = const(0xE9)
_DESC_MAGIC = b"\x32\x54\xcd\xab"  # esp_app_desc_t magic 0xABCD5432, little-endian
AUTO = "auto"
CONSENT = "consent"
DOWNLOAD_ONLY = "download-only"


class Identity:
    """What the manifest is checked against: set at provisioning."""

    def __init__(self, board, chip_id, hw_rev, version):
        self.board = board
        self.chip_id = chip_id
        self.hw_rev = hw_rev
        self.version = version  # the version this firmware was built as (until an update commits)


class Agent:
    def __init__(self, identity, keys, *, policy=AUTO, reporter=None, clock=None,
                 state_path="fota_state.json", journal_path="fota_journal.json",
                 config_path="config.json", self_test_ms=30000, max_hold_s=600, window=None,
                 reset_after_commit=False):
        self.identity = identity
        self.keys = keys
        self.policy = policy
        self.reporter = reporter
        self.clock = clock  # () -> Unix time, or None when the clock is not set
        self.store = store.Store(state_path)
        self.journal_path = journal_path
        self.config_path = config_path
        self.self_test_ms = self_test_ms
        self.max_hold_s = max_hold_s
        self.window = window  # (start minute of day, minutes) in local time, or None
        self.reset_after_commit = reset_after_commit
        self.wdt = None  # the self-test's watchdog: keep feeding it after a commit
        self.checks = []
        self.migrate = None
        self.state = IDLE
        self.manifest = None
        self.approved = False
        self.tag = None
        self._hold_since = None
        self._buf = bytearray(SECTOR)  # flash reads and the inflater's output
        self._carry = bytearray(SECTOR + _MARGIN)  # the inflater's input (zlib packages)
        self._writer = None
        self._inflater = None
        self._target = None
        self._fresh = 0
        self._started = 0

    # -- reporting ---------------------------------------------------------
    def now(self):
        return self.clock() if self.clock else None

    def version(self):
        return self.store.data["version"] or self.identity.version

    def report(self, event, **info):
        if self.reporter:
            if "tag" not in info and self.tag is not None:
                info["tag"] = self.tag
            self.reporter(event, info)

    def status(self):
        res = self.store.data["result"] or {}
        w = self._writer
        return {
            "state": self.state,
            "version": self.version(),
            "seq": self.store.data["seq_floor"],
            "progress": [w.count, w.chunks] if w else None,
            "result": res.get("lwm2m", 0),
            "code": res.get("code", 0),
            "detail": res.get("detail"),
            "errors": self.store.data["errors"],
        }

    def state_json(self, device_id, offer_id):
        """The reported state document (docs/PROTOCOL.md) that every transport sends."""
        st = self.status()
        st["id"] = device_id
        st["board"] = self.identity.board
        st["hw_rev"] = self.identity.hw_rev
        st["offer"] = offer_id
        return json.dumps(st)

    def _fail(self, code, detail):
        self.store.log_error(code, detail, self.now())
        self.store.set_result(code, errors.lwm2m_result(code), detail, self.manifest.version if self.manifest else None, self.now())
        self.store.save()
        self.state = IDLE
        self._writer = self._inflater = None
        self.report("failed", code=code, name=errors.name(code), detail=detail)

    # -- boot --------------------------------------------------------------
    def add_check(self, name, fn):
        """Register a self-test step: fn() -> True when healthy (False or an exception fails)."""
        self.checks.append((name, fn))

    def boot(self):
        """Run first in main.py: confirm a new image, or report the rollback of one."""
        return confirm.on_boot(self)

    # -- offer and download -------------------------------------------------
    def offer(self, blob, chunk=SECTOR, tag=None):
        """Check an offer (header + manifest + signature) and get ready to receive chunks.

        `tag` is the transport's name for this offer; it rides along in events and in
        the pending record, so outcomes after the reboot can be matched to the offer.
        """
        if self.state in (DOWNLOADING, UPDATING):
            raise OtaError(errors.BUSY)
        self.tag = tag
        try:
            return self._begin(blob, chunk)
        except OtaError as e:
            self._fail(e.code, "offer refused")
            raise
        except MemoryError:
            self._fail(errors.OUT_OF_MEMORY, "offer")
            raise OtaError(errors.OUT_OF_MEMORY)

    def _begin(self, blob, chunk):
        mlen, _ = manifest.parse_header(blob[: manifest.HEADER_SIZE])
        end = manifest.HEADER_SIZE + mlen
        running = esp32.Partition(esp32.Partition.RUNNING)
        od_part, entries, slots = confirm.ota_layout()
        run_idx = confirm.slot_index(slots, running)
        if otadata.slot_state(entries, run_idx, len(slots)) == otadata.PENDING_VERIFY:
            raise OtaError(errors.UNCONFIRMED)
        target = running.get_next_update()
        if target.info()[2] == running.info()[2]:
            raise OtaError(errors.NO_SLOT)
        ident = self.identity
        dev = manifest.Device(ident.board, ident.chip_id, ident.hw_rev, self.store.data["seq_floor"], self.version(), self.now())
        m = manifest.check(blob[:end], blob[end : end + manifest.SIGNATURE_SIZE], self.keys, dev, target.info()[3])
        self.manifest = m
        self._target = target
        self._slots = (od_part, entries, slots, confirm.slot_index(slots, target))
        self._writer = SlotWriter(target, m.image_size, chunk)
        self._writer.before_first = self._first_write
        self._inflater = None
        self._fresh = 0
        self.approved = False
        if m.encoding == 1:
            from .inflate import Inflater

            if chunk > SECTOR:
                raise OtaError(errors.CHUNK_RANGE)
            self._inflater = Inflater(self._writer, m, self._carry, self._buf)
        else:
            j = store.read_json(self.journal_path)
            if j and j.get("id") == m.image_sha256.hex() and j.get("slot") == target.info()[4]:
                self._writer.resume(j)
        self.state = DOWNLOADING
        self._started = time.ticks_ms()
        self.report("downloading", version=m.version, size=m.encoded_size, have=self._writer.count)
        return m

    def wanted(self, limit=8):
        """Encoded-payload offsets to ask for next (at most `limit`)."""
        if self.state != DOWNLOADING:
            return []
        if self._inflater is not None:  # in order: the next ones after what was consumed
            inf, step = self._inflater, self._writer.chunk
            return [o for o in range(inf.next, min(inf.encoded_size, inf.next + limit * step), step)]
        w, out, i = self._writer, [], 0
        if not w.has(0):
            return [0]  # nothing goes to flash before the first chunk was checked
        while len(out) < limit:
            i = w.next_missing(i)
            if i < 0:
                break
            out.append(i * w.chunk)
            i += 1
        return out

    def on_chunk(self, offset, mv):
        """A chunk of the encoded payload at `offset`; True when it was new and stored."""
        if self.state != DOWNLOADING:
            return False
        try:
            if self._inflater is not None:
                return self._inflater.feed(offset, mv)
            return self._raw_chunk(offset, mv)
        except OtaError as e:
            self._fail(e.code, "chunk at %d" % offset)
            raise

    def _raw_chunk(self, offset, mv):
        w = self._writer
        if offset >= w.size or offset % w.chunk:
            raise OtaError(errors.CHUNK_RANGE)
        if offset and not w.has(0):
            return False  # the first chunk decides whether flash is touched at all
        if not w.write_chunk(offset, mv):
            return False
        self._fresh += len(mv)
        if self._fresh >= _JOURNAL_BYTES or w.done():
            self._save_journal()
        return True

    def _first_write(self, mv):
        # Called by the slot writer before it erases anything: is this an app image
        # for this chip (header and descriptor)? Then drop a stale otadata entry.
        self._check_header(mv)
        self._erase_stale()

    def _check_header(self, mv):
        # The image header and app descriptor at the start of the first chunk.
        if len(mv) < 0x24 or mv[0] != _APP_MAGIC or mv[1] > 16:
            raise OtaError(errors.BAD_IMAGE)
        if mv[12] | (mv[13] << 8) != self.identity.chip_id or bytes(mv[0x20:0x24]) != _DESC_MAGIC:
            raise OtaError(errors.BAD_IMAGE)

    def _erase_stale(self):
        od_part, entries, slots, target_idx = self._slots
        if od_part is not None and otadata.erase_stale(od_part, entries, target_idx, len(slots)):
            self.report("otadata", erased="stale entry for " + self._target.info()[4])

    def _save_journal(self):
        j = self._writer.journal()
        j["id"] = self.manifest.image_sha256.hex()
        j["slot"] = self._target.info()[4]
        store.write_atomic(self.journal_path, _dumps(j))
        self._fresh = 0
        self.report("progress", have=self._writer.count, total=self._writer.chunks)

    def complete(self):
        if self._inflater is not None:
            return self._inflater.next >= self._inflater.encoded_size
        return self._writer is not None and self._writer.done()

    # -- verify and install --------------------------------------------------
    def finish(self):
        """All chunks are in: check both digests, then install as the policy says."""
        try:
            self._verify()
        except OtaError as e:
            store.remove(self.journal_path)
            self._fail(e.code, "verify")
            raise
        m = self.manifest
        self.store.data["download"] = {"slot": self._target.info()[4], "seq": m.sequence, "version": m.version,
                                       "sha": m.image_sha256.hex(), "size": m.image_size}
        self.store.save()
        store.remove(self.journal_path)
        self.state = DOWNLOADED
        self.report("downloaded", version=m.version, ms=time.ticks_diff(time.ticks_ms(), self._started))
        if self.policy == AUTO:
            return self.install()
        return errors.LWM2M_DEFERRED

    def _verify(self):
        m = self.manifest
        if not self.complete():
            raise OtaError(errors.INCOMPLETE)
        if self._inflater is not None:
            if not self._inflater.finished() or self._inflater._decoded != m.image_size:
                raise OtaError(errors.INFLATE)
            if self._inflater.sha.digest() != m.encoded_sha256:
                raise OtaError(errors.ENCODED_DIGEST)
        if self._writer.sha256(self._buf) != m.image_sha256:
            raise OtaError(errors.DIGEST_MISMATCH)

    def cancel(self):
        """Abandon the download in progress (the server withdrew the offer)."""
        self.cancel_with(errors.CANCELLED, "cancelled")

    def cancel_with(self, code, detail):
        """End the attempt in progress with `code`; chunks already in flash stay for a retry."""
        if self.state == DOWNLOADING:
            if self._writer is not None and self._inflater is None:
                self._save_journal()
            self._fail(code, detail)

    def approve(self):
        """Consent given (by the server or a local callback): install when allowed."""
        self.approved = True
        if self.state == DOWNLOADED:
            return self.install()
        return None

    def hold(self, busy=True):
        """The application's busy-lock: no reboot into a new image while held (max_hold_s at most)."""
        if not busy:
            self._hold_since = None
        elif self._hold_since is None:
            self._hold_since = time.time()

    def may_install(self):
        if self.policy != AUTO and not self.approved:
            return False
        if self._hold_since is not None and time.time() - self._hold_since < self.max_hold_s:
            return False
        return confirm.in_window(self.window, self.now())

    def install(self):
        """Reboot into the downloaded image now, if the policy, busy-lock and window allow."""
        if self.state != DOWNLOADED:
            raise OtaError(errors.INCOMPLETE)
        if not self.may_install():
            self.report("deferred", version=self.manifest.version)
            return errors.LWM2M_DEFERRED
        return confirm.stage_and_reboot(self, self._target, self.manifest)


def _dumps(obj):
    import json

    return json.dumps(obj)
