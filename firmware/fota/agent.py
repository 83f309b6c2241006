"""The update agent: offer -> chunks -> verify -> install, and what it reports.

Transports (a local file, MQTT, CoAP) push what they receive; the agent decides
what goes to flash. Nothing is erased before the manifest passed every check and
the first chunk is an app image for this chip; every chunk goes where it belongs;
the image is hashed again from flash before `set_boot()`.

    agent = Agent(Identity("sim", 0, "A", "1.0.0"), trusted_keys.KEYS)
    agent.boot()                                  # confirm or roll back a new image (fota.boot)
    agent.offer(header_manifest_signature, chunk=4096)
    for offset in agent.wanted(8):
        agent.on_chunk(offset, memoryview(data))
    agent.finish()                                # digests, then install per policy (resets)

This is the only API a link uses: the state constants below, offers (`offer`, `wanted`,
`on_chunk`, `finish`), outcomes (`cancel`, `cancel_with`, `restart`), offers already done
(`is_done`, `mark_done`) and the reported state (`state_json`). The application gates installs with
`hold`, `may_reboot` and `set_power` (a power check: firmware/README.md "Deep-sleep duty cycles"). Persistence is the BootState's
(fota.boot.state), which only this module and fota.boot touch.
"""

import json

from . import errors
from .boot import confirm
from .boot.state import BootState
from .check import ed25519, manifest
from .compat import bytes_io, const, ticks_diff, ticks_ms
from .errors import OtaError
from .slot.writer import SECTOR, SlotWriter

# LwM2M Object 5 "State" (resource 3)
IDLE = const(0)
DOWNLOADING = const(1)
DOWNLOADED = const(2)
UPDATING = const(3)
_MARGIN = const(1024)  # inflate.MARGIN: input kept ahead of the decoder
_JOURNAL_BYTES = const(65536)  # persist the chunk bitmap after this much new data
_APP_MAGIC = const(0xE9)  # esp_image_header_t.magic
_APP_DESC_AT = const(0x20)  # esp_app_desc_t follows the 24-byte image header and first segment header
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


# Is the start of an image (the first chunk) an app image for chip `chip_id`? esp_image_header_t
# (magic, segment count <= 16, chip id at 12) and the esp_app_desc_t magic; BAD_IMAGE otherwise.
# With `seq`: its secure_version (app desc +4) must be the manifest's sequence (SECURE_VERSION),
# so the floor a committed image carries is the one its manifest promised.
def check_image_start(mv, chip_id, seq=None):
    if len(mv) < _APP_DESC_AT + 8 or mv[0] != _APP_MAGIC or mv[1] > 16:
        raise OtaError(errors.BAD_IMAGE)
    if mv[12] | (mv[13] << 8) != chip_id or bytes(mv[_APP_DESC_AT : _APP_DESC_AT + 4]) != _DESC_MAGIC:
        raise OtaError(errors.BAD_IMAGE)
    if seq is not None and int.from_bytes(mv[_APP_DESC_AT + 4 : _APP_DESC_AT + 8], "little") != seq:
        raise OtaError(errors.SECURE_VERSION)


class Agent:
    def __init__(self, identity, keys, *, policy=AUTO, reporter=None, clock=None,
                 state_path="fota_state.json", journal_path="fota_journal.json",
                 config_path="config.json", self_test_ms=30000, max_hold_s=600, window=None,
                 reset_after_commit=False, roots=()):
        self.identity = identity
        self.keys = keys
        self.roots = roots  # root keys that sign key lists (trusted_keys.ROOTS), docs/FORMAT.md
        self.policy = policy
        self.reporter = reporter
        self.clock = clock  # () -> Unix time, or None when the clock is not set
        self.boot_state = BootState(state_path, journal_path, config_path)
        self.self_test_ms = self_test_ms
        self.max_hold_s = max_hold_s
        self.window = window  # (start minute of day, minutes) in local time, or None
        self.reset_after_commit = reset_after_commit
        self.checks = []
        self.migrate = None
        self.state = IDLE
        self.manifest = None
        self.approved = False
        self.tag = None
        self._hold_since = None
        self.alive_at = None  # ticks_ms of the application's last sign of life (Service.alive): downtime starts there
        self.may_reboot = True  # False: no reboot into a new image now (a duty cycle's wake the application keeps)
        self.power = None  # () -> the application's power level (set_power), or None: no power gate
        self._power_install = self._power_download = None
        self.deferred = None  # {"code", "stage", "detail"} of the install or download the power check put off
        self.suspended = False  # suspend(): the board is about to sleep, no more chunks are asked for
        self._frozen = False  # checkpoint() made: no chunk is taken after it (the journal is what is in flash)
        self._buf = bytearray(SECTOR)  # flash reads and the inflater's output
        self._carry = bytearray(_MARGIN)  # the inflater moves its undecoded tail through it (zlib packages)
        self._zin = bytes_io(SECTOR + _MARGIN)  # the inflater's input stream, made while the heap is whole
        self._room = None
        self._reserve()  # the decoder's state and window (zlib and delta packages), while the heap is whole
        ed25519.reserve()  # and the verifier's fixed tables
        self._writer = None
        self._inflater = None
        self._patcher = None  # delta packages: the decoded patch applied from the running slot
        self._target = None
        self._fresh = 0
        self._started = 0
        self._stride = 0  # zlib: decoded bytes between the package's resume points (0: none)
        self._point = 0  # zlib: the last resume point the journal names
        self._points = 0  # zlib: how many the package has

    # The self-test's watchdog: keep feeding it after a commit (an ESP32 watchdog cannot be stopped).
    @property
    def wdt(self):
        return self.boot_state.wdt

    # -- reporting ---------------------------------------------------------
    # Unix time: the clock, never before the newest signed `created` seen (BootState.now).
    def now(self):
        return self.boot_state.now(self.clock() if self.clock else None)

    def version(self):
        return self.boot_state.version(self.identity.version)

    def log_error(self, code, detail):
        """Keep an error in the bounded error log the store persists (the state document reports it)."""
        st = self.boot_state.store
        st.log_error(code, detail, self.now())
        st.save()

    def report(self, event, **info):
        if self.reporter:
            if "tag" not in info and self.tag is not None:
                info["tag"] = self.tag
            self.reporter(event, info)

    def status(self):
        seq, res, errs = self.boot_state.status()
        w = self._writer
        return {
            "state": self.state,
            "version": self.version(),
            "seq": seq,
            "progress": [w.count, w.chunks] if w else None,
            "result": res.get("lwm2m", 0),
            "code": res.get("code", 0),
            "detail": res.get("detail"),
            "errors": errs,
            "image": self.boot_state.store.data.get("image"),  # running image's SHA-256 (hex), or None
            "deferred": self.deferred,
        }

    def state_json(self, device_id, offer_id):
        """The reported state document (docs/PROTOCOL.md) that every transport sends."""
        st = self.status()
        st["id"] = device_id
        st["board"] = self.identity.board
        st["hw_rev"] = self.identity.hw_rev
        st["offer"] = offer_id
        return json.dumps(st)

    def _fail(self, code, detail, report=True):
        self.boot_state.failed(code, detail, self.manifest.version if self.manifest else None, self.now())
        self.state = IDLE
        self._writer = self._inflater = self._patcher = None
        self._reserve()
        if report:
            self.report("failed", code=code, name=errors.name(code), detail=detail)

    # The inflater's room (slot/inflate.py reserve): held from the start, handed over with the only
    # reference (the inflater frees it for the decoder), made again when an attempt ends without a reset.
    def _reserve(self):
        if self._room is None:
            from .slot.inflate import reserve

            try:
                self._room = reserve()
            except MemoryError:  # the next zlib offer reserves its own, or is refused before any erase
                pass

    def _take_room(self):
        room, self._room = self._room, None
        return room

    # -- offers a link has seen through -------------------------------------
    def is_done(self, offer_id):
        """True when the offer already had an outcome: it is never tried again."""
        return self.boot_state.is_done(offer_id)

    def mark_done(self, offer_id):
        self.boot_state.mark_done(offer_id)

    def source(self, offer_id):
        """The version (hex) of the offer's resource pinned by pin_source(), across resets; or None."""
        return self.boot_state.source(offer_id)

    def pin_source(self, offer_id, version):
        """Record which version of the offer's resource is being fetched (restart() forgets it)."""
        self.boot_state.pin_source(offer_id, version)

    # -- boot --------------------------------------------------------------
    def add_check(self, name, fn):
        """Register a self-test step: fn() -> True when healthy (False or an exception fails)."""
        self.checks.append((name, fn))

    def boot(self):
        """Run first in main.py: confirm a new image, or report the rollback of one."""
        pending = self.boot_state.pending()
        if pending:
            self.tag = pending.get("tag")
        result, code, detail = confirm.on_boot(self.boot_state, self.checks, self.migrate, self.self_test_ms,
                                               self.reset_after_commit, self.now(), self._boot_event)
        if code:
            self._fail(code, detail)
            if result is None:
                raise OtaError(code)
        return result

    def _boot_event(self, event, **info):
        if event == "rebooting":
            self.state = UPDATING
        self.report(event, **info)

    # -- offer and download -------------------------------------------------
    def offer(self, blob, chunk=SECTOR, tag=None):
        """Check an offer (header + manifest + signature) and get ready to receive chunks.

        `tag` is the transport's name for this offer; it rides along in events and in
        the pending record, so outcomes after the reboot can be matched to the offer.
        """
        if self.state in (DOWNLOADING, UPDATING):
            raise OtaError(errors.BUSY)
        self.tag = tag
        if self._power_gate(self._power_download, "download"):  # not an outcome: the link tries again later
            raise OtaError(errors.POWER)
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
        bs = self.boot_state
        target = bs.prepare()
        ident = self.identity
        dev = manifest.Device(ident.board, ident.chip_id, ident.hw_rev, bs.seq_floor(), self.version(), self.now(),
                              bs.key_list_version())
        if dev.kl_version:
            dev.kl_stored = bs.stored_key_list()
        try:
            m = manifest.check(blob[:end], blob[end : end + manifest.SIGNATURE_SIZE], self.keys, dev,
                               target.info()[3], self.roots)
        finally:
            bs.note_key_list(dev.kl_seen)  # a newer root-signed list counts even if the package is refused
        bs.admit(m)  # ROLLED_BACK_BEFORE for an image that rolled back here; raises the time floor
        self.manifest = m
        self._target = target
        self._writer = SlotWriter(target, m.image_size, chunk)
        self._inflater = self._patcher = None
        self._fresh = self._stride = self._point = 0
        self.approved = False
        self.suspended = self._frozen = False
        if m.encoding and chunk > SECTOR:
            raise OtaError(errors.CHUNK_RANGE)
        if bs.has_download(target.info()[4], m.image_sha256.hex()):
            self._writer.fill()  # verified in flash before a reset or a deep sleep: complete(), finish() checks it again
        elif m.encoding == 2:  # delta: BASE_MISMATCH unless the running image is its base (slot/patch.py)
            from .slot import patch

            body = memoryview(blob)[manifest.HEADER_SIZE : end]
            self._inflater, self._patcher = patch.begin(m, body, self._inflated, self._carry, self._buf, self._zin,
                                                        self._take_room())
        elif m.encoding == 1:
            self._zlib_begin(m, chunk, target.info()[4])
        else:
            j = bs.journal(m.image_sha256.hex(), target.info()[4], self._buf)
            if j:
                self._writer.resume(j)
        self.state = DOWNLOADING
        self._started = ticks_ms()
        self.report("downloading", version=m.version, size=m.encoded_size, have=self._writer.count)
        return m

    # A zlib download starts at the last resume point its journal names (slot/inflate.py), else at 0.
    def _zlib_begin(self, m, chunk, slot):
        from .slot.inflate import Inflater, resume_table

        stride, points = resume_table(m)
        self._stride, self._points = stride, points
        self._point = 0
        j = self.boot_state.journal("z" + m.encoded_sha256.hex(), slot, self._buf) if points else None
        if j:
            k = j.get("z")
            if isinstance(k, int) and 0 < k <= points:
                self._point = k
        self._inflater = Inflater(self._inflated, m, self._carry, self._buf, self._zin, self._take_room(), chunk,
                                  self._point)
        if self._point:
            self._writer.resume_prefix(self._point * stride)

    # A root-signed key list sent on its own (docs/PROTOCOL.md "Key lists"): kept when it verifies
    # against the roots and is newer than the newest seen (or the kept copy is lost); packages without
    # a list are then checked against it. Reports `keylist` when kept or refused; returns its version.
    def take_key_list(self, raw):
        from .check import keylist

        bs = self.boot_state
        seen = bs.key_list_version()
        try:
            kl = keylist.check(raw, self.roots, seen)
        except OtaError as e:
            self.log_error(e.code, "key list")
            self.report("keylist", tag=None, code=e.code, name=errors.name(e.code), detail="key list refused")
            raise
        if kl.version > seen or bs.stored_key_list() is None:
            bs.store_key_list(raw, kl.version)
            self.report("keylist", tag=None, code=0, version=kl.version)
        return kl.version

    def wanted(self, limit=8):
        """Encoded-payload offsets to ask for next (at most `limit`)."""
        if self.state != DOWNLOADING or self.suspended:
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
        if self.state != DOWNLOADING or self._frozen:
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
        if not w.has(0):
            if offset:
                return False  # the first chunk decides whether flash is touched at all
            w.check_range(0, len(mv))
            self._first_write(mv)
        if not w.write_chunk(offset, mv):
            return False
        self._fresh += len(mv)
        if self._fresh >= _JOURNAL_BYTES or w.done():
            self._save_journal()
        return True

    # The inflater's output on its way to the slot: the image start is checked first.
    def _inflated(self, offset, mv):
        if offset == 0:
            self._first_write(mv)
        w = self._writer
        w.write_at(offset, mv)
        w.count = (w.written + w.chunk - 1) // w.chunk  # progress in chunks of the image
        if self._stride and self._patcher is None and not self._frozen:
            k = w.written // self._stride
            if self._point < k <= self._points:  # flash holds the image up to a new resume point
                self._point = k
                self._save_journal()

    # Before anything is erased: is this an app image for this chip? Then drop a stale otadata entry.
    def _first_write(self, mv):
        check_image_start(mv, self.identity.chip_id, self.manifest.sequence)
        self.boot_state.forget_download()  # another image is going into the slot
        if self.boot_state.erase_stale():
            self.report("otadata", erased="stale entry for " + self._target.info()[4])

    def _save_journal(self):
        m = self.manifest
        if self._inflater is None:
            self.boot_state.save_journal(self._writer.journal(), m.image_sha256.hex(), self._target.info()[4])
        else:
            self.boot_state.save_journal({"z": self._point}, "z" + m.encoded_sha256.hex(), self._target.info()[4])
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
            self.boot_state.drop_journal()
            self._fail(e.code, "verify")
            raise
        m = self.manifest
        self.boot_state.downloaded(self._target.info()[4], m)
        self.boot_state.drop_journal()
        self.state = DOWNLOADED
        self.report("downloaded", version=m.version, ms=ticks_diff(ticks_ms(), self._started))
        if self.policy == AUTO:
            return self.install()
        return errors.LWM2M_DEFERRED

    def _verify(self):
        m = self.manifest
        if not self.complete():
            raise OtaError(errors.INCOMPLETE)
        if self._inflater is not None:
            if not self._inflater.finished() or self._inflater.decoded != self._inflater.image_size:
                raise OtaError(errors.INFLATE)
            if self._patcher is not None and not self._patcher.finished():
                raise OtaError(errors.PATCH)
            sha = self._inflater.sha  # None after a resume point: the image digest below is the check
            if sha is not None and sha.digest() != m.encoded_sha256:
                raise OtaError(errors.ENCODED_DIGEST)
        if self._writer.sha256(self._buf) != m.image_sha256:
            raise OtaError(errors.DIGEST_MISMATCH)

    def cancel(self):
        """Abandon the download in progress (the server withdrew the offer)."""
        self.cancel_with(errors.CANCELLED, "cancelled")

    def cancel_with(self, code, detail, report=True):
        """End the attempt in progress with `code`; chunks already in flash stay for a retry.

        report=False records the failure without a "failed" event: the link chose to end it.
        """
        if self.state == DOWNLOADING:
            if self._writer is not None and self._inflater is None and self._writer.count:  # nothing in flash: nothing to keep
                self._save_journal()
            self._fail(code, detail, report)

    def suspend(self):
        """The board is about to sleep (or reset): no more chunks are asked for (those asked for still count);
        then checkpoint(). The next offer() of it (after the wake) resumes the download."""
        if self.state == DOWNLOADING:
            self.suspended = True

    def checkpoint(self):
        """A raw download's progress goes to the journal now (else every 64 KiB) and no chunk is taken after it,
        so no chunk in flash is fetched again after a reset. A zlib download's journal names its last resume point
        (written as flash passes each): after a reset it goes on from there. A delta download starts again from
        its stream start (its patch state is in RAM)."""
        if self.state == DOWNLOADING:
            if self._inflater is None and self._fresh:
                self._save_journal()
            self._frozen = True

    def restart(self, detail):
        """The source changed under the offer: end the attempt quietly, drop what is in flash.

        The next offer() of it starts from chunk 0 (journal and pinned source version dropped).
        """
        self.cancel_with(errors.CANCELLED, detail, report=False)
        self.boot_state.drop_journal()
        self.boot_state.forget_source()

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
            self._hold_since = ticks_ms()  # a duration: ticks, which no clock setting moves

    def may_install(self):
        if not self.may_reboot or (self.policy != AUTO and not self.approved):
            return False
        if self._hold_since is not None and ticks_diff(ticks_ms(), self._hold_since) < self.max_hold_s * 1000:
            return False
        return confirm.in_window(self.window, self.now())

    def set_power(self, fn, install=None, download=None):
        """The application's power check: fn() -> its level (battery mV, or a scale of its own; an exception
        counts as too low). An install waits while the level is below `install`, a download is not started
        below `download` (None: no gate). Each deferral is reported once (event `deferred`, code POWER) and
        kept in the state (`deferred`) until the gate passes."""
        self.power = fn
        self._power_install = install
        self._power_download = download

    # True when the power check is below `minimum` now: the deferral is recorded (reported when it is new).
    def _power_gate(self, minimum, stage):
        if self.power is None or minimum is None:
            return False
        try:
            level = self.power()
            short = level is None or level < minimum
        except Exception as e:  # noqa: BLE001 - the application's check failing is a failing check
            level, short = repr(e)[:40], True
        if not short:
            if self.deferred is not None and self.deferred["stage"] == stage:
                self.deferred = None
            return False
        new = self.deferred is None or self.deferred["stage"] != stage
        self.deferred = {"code": errors.POWER, "stage": stage, "detail": "power %s < %s" % (level, minimum)}
        if new:
            info = self.deferred
            self.report("deferred", code=errors.POWER, name="POWER", stage=stage, detail=info["detail"],
                        version=self.manifest.version if stage == "install" else None)
        return True

    def install(self):
        """Reboot into the downloaded image now, if the policy, busy-lock and window allow."""
        if self.state != DOWNLOADED:
            raise OtaError(errors.INCOMPLETE)
        if not self.may_install():
            self.report("deferred", version=self.manifest.version)
            return errors.LWM2M_DEFERRED
        if self._power_gate(self._power_install, "install"):
            return errors.LWM2M_DEFERRED
        self.boot_state.stage(self._target, self.manifest, self.version(), self.tag, confirm.last_action(self.alive_at))
        code = confirm.set_boot(self.boot_state, self._target, self._boot_event)  # resets unless refused
        self._fail(code, "set_boot refused the image")
        raise OtaError(code)
