"""Boot state: the store, the journal, otadata and the pending record, behind one object.

The agent composes one `BootState`; nothing else reads or writes the store's keys. It answers
questions and records facts; it never touches the agent (what to report, and in which state
the agent is, stays the agent's business).

    boot = BootState("fota_state.json", "fota_journal.json", "config.json")
    target = boot.prepare()                       # the slot to write (UNCONFIRMED, NO_SLOT refused)
    boot.erase_stale()                            # before the first write: what esp_ota_begin does
    boot.failed(code, "detail", version, now)     # error log + result, saved
    boot.is_done(offer_id); boot.mark_done(offer_id)
    boot.stage(target, manifest, from_version, tag, down)   # pending record + config backup, before set_boot
"""

import json

try:
    import esp32
except ImportError:  # CPython: importable for tests and tools; the board supplies it
    esp32 = None

from .. import errors
from ..compat import const
from ..errors import OtaError
from . import otadata, store

_TYPE_DATA = const(1)
_SUBTYPE_OTADATA = const(0)
_SUBTYPE_OTA_MIN = const(0x10)
_OFFERS_KEPT = const(8)  # offers with an outcome remembered (never tried again)
_DESC_AT = const(0x20)  # esp_app_desc_t in an app image (docs/FORMAT.md "Anti-rollback")
_DESC_MAGIC = const(0xABCD5432)  # esp_app_desc_t.magic_word; secure_version follows (+4)
_KEY_LIST_MAX = const(512)  # docs/FORMAT.md "Key lists"
_JOURNAL_MAX = const(4096)  # the journal's JSON: two hex bitmaps (a 2.5 MB slot: ~400 bytes in 4 KiB chunks, ~1.4 KB in 1 KiB)
_NVS_NAMESPACE = const("fota")
_NVS_JOURNAL = const("journal")


# (otadata Partition or None, its two entries, the ota_N app partitions in N order)
def ota_layout():
    found = esp32.Partition.find(_TYPE_DATA, _SUBTYPE_OTADATA)
    part = found[0] if found else None
    entries = otadata.read(part) if part else []
    slots = [p for p in esp32.Partition.find(esp32.Partition.TYPE_APP) if _SUBTYPE_OTA_MIN <= p.info()[1] < 0x20]
    slots.sort(key=lambda p: p.info()[1])
    return part, entries, slots


def slot_index(slots, part):
    addr = part.info()[2]
    for i, p in enumerate(slots):
        if p.info()[2] == addr:
            return i
    return -1


# The running image's esp_app_desc_t.secure_version (its package's sequence, stamped by `fota
# sign`): the floor that survives the loss of every file. 0 when there is no app descriptor.
def image_secure_version(part):
    buf = bytearray(8)
    try:
        part.readblocks(0, buf, _DESC_AT)
    except OSError:
        return 0
    if int.from_bytes(buf[0:4], "little") != _DESC_MAGIC:
        return 0
    return int.from_bytes(buf[4:8], "little")


def copy_file(src, dst):
    try:
        with open(src) as f:
            text = f.read()
    except OSError:
        return False
    store.write_atomic(dst, text)
    return True


class BootState:
    def __init__(self, state_path="fota_state.json", journal_path="fota_journal.json", config_path="config.json"):
        self.store = store.Store(state_path)
        self.key_list_path = state_path.rsplit(".", 1)[0] + ".keylist"  # a key list pushed on its own
        self.journal_path = journal_path
        self.config_path = config_path
        self.wdt = None  # the self-test's watchdog (confirm.py arms it; it cannot be stopped)
        self._layout = (None, [], [], -1)  # (otadata part, entries, slots, target index) of the last prepare()
        self._image_seq = None  # the running image's secure_version, read once
        self._nvs = None  # the journal's esp32.NVS, opened at first use (False: none, the file is used)

    # -- what is recorded ---------------------------------------------------------
    def version(self, default):
        return self.store.data["version"] or default

    # The anti-rollback floor: the anchors, the JSON file and the running image's secure_version,
    # whichever is highest; anchors lost or behind the image are raised to it.
    def seq_floor(self):
        if self._image_seq is None:
            self._image_seq = image_secure_version(esp32.Partition(esp32.Partition.RUNNING)) if esp32 else 0
        st = self.store
        if self._image_seq > st.floor():
            st.raise_floor(self._image_seq)
        return st.floor()

    def rolled_back(self, sha_hex):
        return self.store.rolled_back(sha_hex)

    # The newest key-list version seen (0: none yet) and its record (monotonic, in the anchors).
    def key_list_version(self):
        return self.store.records.data["kl"]

    def note_key_list(self, version):
        self.store.records.raise_to("kl", version)

    # The key list pushed to the device on its own (bytes, verified again when used), or None.
    def stored_key_list(self):
        try:
            with open(self.key_list_path, "rb") as f:
                return f.read(_KEY_LIST_MAX + 1)
        except OSError:
            return None

    # Keep a verified key list: the file first (tmp + rename), then its version in the anchors, so a
    # cut in between leaves a newer file that still verifies against the older version recorded.
    def store_key_list(self, raw, version):
        tmp = self.key_list_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(raw)
        store.replace(tmp, self.key_list_path)
        self.note_key_list(version)

    # Unix time from the clock's reading `t` (None: not set), never before the time floor: the
    # newest signed `created` seen. A clock set back, or not set yet, cannot revive an expired package.
    def now(self, t):
        floor = self.store.records.data["t"]
        return floor if floor and (t is None or t < floor) else t

    # A manifest that passed every check: refused if its image rolled back here before; its
    # signed `created` raises the time floor.
    def admit(self, m):
        if self.store.rolled_back(m.image_sha256.hex()):
            raise OtaError(errors.ROLLED_BACK_BEFORE)
        self.store.records.raise_to("t", m.created)

    def pending(self):
        return self.store.data["pending"]

    def status(self):
        """(sequence floor, last result or {}, error log) for the reported state."""
        d = self.store.data
        return self.seq_floor(), d["result"] or {}, d["errors"]

    def failed(self, code, detail, version, now):
        st = self.store
        st.log_error(code, detail, now)
        st.set_result(code, errors.lwm2m_result(code), detail, version, now)
        st.save()

    def downloaded(self, slot, m):
        self.store.data["download"] = {"slot": slot, "seq": m.sequence, "version": m.version,
                                       "sha": m.image_sha256.hex(), "size": m.image_size}
        self.store.save()

    # The image `sha` (hex) is verified in `slot` already: downloaded, not yet installed (a reset or a deep sleep came first).
    def has_download(self, slot, sha):
        d = self.store.data.get("download")
        return bool(d) and d.get("slot") == slot and d.get("sha") == sha

    def forget_download(self):
        if self.store.data.get("download"):
            self.store.data["download"] = None
            self.store.save()

    # -- offers with an outcome: never tried again, even if the server still offers them
    def is_done(self, offer_id):
        return offer_id in self.store.data.get("offers_done", ())

    def mark_done(self, offer_id):
        done = self.store.data.setdefault("offers_done", [])
        if offer_id not in done:
            done.append(offer_id)
            del done[:-_OFFERS_KEPT]
            self.store.save()

    # The version of the resource an offer is fetched from (a CoAP ETag, hex), kept across a
    # reset so a download resumed after one is known to continue the same bytes.
    def source(self, offer_id):
        tag = self.store.data.get("coap_etag")
        return tag[1] if tag and tag[0] == offer_id else None

    def pin_source(self, offer_id, version):
        tag = [offer_id, version]
        if self.store.data.get("coap_etag") != tag:
            self.store.data["coap_etag"] = tag
            self.store.save()

    def forget_source(self):
        self.store.data.pop("coap_etag", None)
        self.store.save()

    # -- the download journal (which chunks and sectors are in flash) --------------------
    # Rewritten every 64 KiB of a raw download, so it lives where a small value is cheap to replace:
    # an NVS blob (ESP-IDF NVS: a commit is atomic and appends a few 32-byte entries to a page). The
    # same JSON in a LittleFS file costs a copy-on-write block and several metadata commits per save
    # (~600 flash reads and an erase: bench/agent.py). Without esp32.NVS (CPython, a board without an
    # nvs partition) the file at journal_path, replaced atomically.
    def _journal_nvs(self):
        if self._nvs is None:
            self._nvs = False
            if esp32 is not None and hasattr(esp32, "NVS"):
                try:
                    self._nvs = esp32.NVS(_NVS_NAMESPACE)
                except OSError:  # no nvs partition
                    pass
        return self._nvs

    # The journal saved for image `image_id` in `slot`, or None; `buf` (4 KiB, the agent's flash buffer) takes the blob.
    def journal(self, image_id, slot, buf=None):
        nv = self._journal_nvs()
        if nv:
            buf = buf or bytearray(_JOURNAL_MAX)
            try:
                j = json.loads(memoryview(buf)[: nv.get_blob(_NVS_JOURNAL, buf)])
            except (OSError, ValueError):  # none saved, or unreadable: start from chunk 0
                j = None
        else:
            j = store.read_json(self.journal_path)
        if j and j.get("id") == image_id and j.get("slot") == slot:
            return j
        return None

    def save_journal(self, j, image_id, slot):
        j["id"] = image_id
        j["slot"] = slot
        text = json.dumps(j)
        nv = self._journal_nvs()
        if nv:
            nv.set_blob(_NVS_JOURNAL, text)
            nv.commit()
        else:
            store.write_atomic(self.journal_path, text)

    def drop_journal(self):
        nv = self._journal_nvs()
        if nv:
            try:
                nv.erase_key(_NVS_JOURNAL)
                nv.commit()
            except OSError:  # ESP_ERR_NVS_NOT_FOUND: none saved
                pass
        else:
            store.remove(self.journal_path)

    # -- slots and otadata ------------------------------------------------------------
    def prepare(self):
        """The partition an update goes to; refuses while the running image is unconfirmed."""
        running = esp32.Partition(esp32.Partition.RUNNING)
        od_part, entries, slots = ota_layout()
        if otadata.slot_state(entries, slot_index(slots, running), len(slots)) == otadata.PENDING_VERIFY:
            raise OtaError(errors.UNCONFIRMED)
        target = running.get_next_update()
        if target.info()[2] == running.info()[2]:
            raise OtaError(errors.NO_SLOT)
        self._layout = (od_part, entries, slots, slot_index(slots, target))
        return target

    # Before the first write into the target: drop an otadata entry that still selects it.
    def erase_stale(self):
        od_part, entries, slots, target_idx = self._layout
        return od_part is not None and otadata.erase_stale(od_part, entries, target_idx, len(slots))

    # -- staging: written before set_boot(), read on the next boot ----------------------
    # `down`: the application's last action (confirm.last_action), for the downtime `committed` reports.
    def stage(self, target, m, from_version, tag, down=None):
        copy_file(self.config_path, self.config_path + ".bak")
        st = self.store
        st.data["pending"] = {
            "slot": target.info()[4],
            "seq": m.sequence,
            "version": m.version,
            "from": from_version,
            "sha": m.image_sha256.hex(),
            "size": m.image_size,
            "fail": None,
            "tag": tag,
            "down": down,
        }
        st.data["download"] = None
        st.save()

    def unstage(self):
        self.store.data["pending"] = None
        self.store.save()
