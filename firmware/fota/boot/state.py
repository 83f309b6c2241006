"""Boot state: the store, the journal, otadata and the pending record, behind one object.

The agent composes one `BootState`; nothing else reads or writes the store's keys. It answers
questions and records facts; it never touches the agent (what to report, and in which state
the agent is, stays the agent's business).

    boot = BootState("fota_state.json", "fota_journal.json", "config.json")
    target = boot.prepare()                       # the slot to write (UNCONFIRMED, NO_SLOT refused)
    boot.erase_stale()                            # before the first write: what esp_ota_begin does
    boot.failed(code, "detail", version, now)     # error log + result, saved
    boot.is_done(offer_id); boot.mark_done(offer_id)
    boot.stage(target, manifest, from_version, tag)   # pending record + config backup, before set_boot
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
        self.journal_path = journal_path
        self.config_path = config_path
        self.wdt = None  # the self-test's watchdog (confirm.py arms it; it cannot be stopped)
        self._layout = (None, [], [], -1)  # (otadata part, entries, slots, target index) of the last prepare()

    # -- what is recorded ---------------------------------------------------------
    def version(self, default):
        return self.store.data["version"] or default

    def seq_floor(self):
        return self.store.data["seq_floor"]

    def pending(self):
        return self.store.data["pending"]

    def status(self):
        """(sequence floor, last result or {}, error log) for the reported state."""
        d = self.store.data
        return d["seq_floor"], d["result"] or {}, d["errors"]

    def failed(self, code, detail, version, now):
        st = self.store
        st.log_error(code, detail, now)
        st.set_result(code, errors.lwm2m_result(code), detail, version, now)
        st.save()

    def downloaded(self, slot, m):
        self.store.data["download"] = {"slot": slot, "seq": m.sequence, "version": m.version,
                                       "sha": m.image_sha256.hex(), "size": m.image_size}
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
    def journal(self, image_id, slot):
        j = store.read_json(self.journal_path)
        if j and j.get("id") == image_id and j.get("slot") == slot:
            return j
        return None

    def save_journal(self, j, image_id, slot):
        j["id"] = image_id
        j["slot"] = slot
        store.write_atomic(self.journal_path, json.dumps(j))

    def drop_journal(self):
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
    def stage(self, target, m, from_version, tag):
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
        }
        st.data["download"] = None
        st.save()

    def unstage(self):
        self.store.data["pending"] = None
        self.store.save()
