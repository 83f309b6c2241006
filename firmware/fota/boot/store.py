"""The agent's persistent state: a JSON file replaced atomically, and redundant anchor records.

The JSON file holds what is convenient to keep: the committed version, the pending-update
record that spans the reboot into a new image, the last result, a bounded error log. What must
never go backwards lives in the anchor `Records` as well: the anti-rollback floor, the newest
key-list version seen, a time floor (the newest signed `created` seen) and the digests of
images that rolled back. Two copies, each with a counter and a CRC; a write goes to the older
copy, so a cut at any byte leaves the newer one intact. Nothing is deleted before its
replacement is durable. Losing every file still leaves the floor the running image carries in
its esp_app_desc_t.secure_version (fota.boot.state reads it).

    st = Store("fota_state.json")       # anchors in fota_state.json.a / .b
    st.floor()                          # 0 on a fresh device
    st.raise_floor(7)                   # anchors first, then the JSON file
    st.log_error(code, "detail", now)
    st.save()
"""

import json
import os

from binascii import crc32

from ..compat import const


MAX_ERRORS = const(8)
_ROLLED_BACK_KEPT = const(4)  # image digests remembered as rolled back
_EEXIST = const(17)
_U32 = const(0xFFFFFFFF)


def _defaults():
    return {"seq_floor": 0, "version": None, "pending": None, "result": None, "errors": [], "download": None,
            "image": None}  # image: SHA-256 (hex) of the running image once an update committed it (None: factory)


# Replace `path` with `text`: a reader (read_json) sees the old file or the new one, never half.
# FAT refuses to rename over a file: the old one is removed only once `.tmp` is complete
# and closed, and read_json falls back to `.tmp` when `path` is missing.
def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    replace(tmp, path)


# Rename `tmp` over `path` (LittleFS renames over a file; FAT does not: remove it first).
def replace(tmp, path):
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.args[0] != _EEXIST:
            raise
        os.remove(path)
        os.rename(tmp, path)


def _load(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def read_json(path):
    found = _load(path)
    if found is None:
        found = _load(path + ".tmp")  # a cut between FAT's remove and rename
    return found


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# One anchor copy: "<counter> <crc32 hex> <json>"; the CRC covers "<counter> <json>".
def _seal(counter, text):
    return "%d %08x %s" % (counter, crc32(("%d " % counter + text).encode()) & _U32, text)


def _unseal(raw):
    parts = raw.split(" ", 2)
    if len(parts) != 3:
        return None
    try:
        counter = int(parts[0])
        crc = int(parts[1], 16)
    except ValueError:
        return None
    if crc != crc32(("%d " % counter + parts[2]).encode()) & _U32:
        return None
    try:
        data = json.loads(parts[2])
    except ValueError:
        return None
    return (counter, data) if isinstance(data, dict) else None


class Records:
    """Two sealed copies of the anchors; the valid one with the larger counter is current."""

    def __init__(self, base):
        self.paths = (base + ".a", base + ".b")
        self.counter = 0
        self.newest = -1  # index of the copy read, -1 when neither is valid
        self.data = {"floor": 0, "kl": 0, "t": 0, "rb": []}
        for i in range(2):
            try:
                with open(self.paths[i]) as f:
                    got = _unseal(f.read())
            except (OSError, ValueError):
                got = None
            if got and (self.newest < 0 or got[0] > self.counter):
                self.counter, self.newest = got[0], i
                self.data.update(got[1])

    # Write the copy that is not current first, with the next counter: the current one stays
    # intact until the new one is complete (a torn write leaves a copy whose CRC fails). Then
    # the other copy, so losing either file later still leaves the newest data.
    def save(self):
        text = json.dumps(self.data)
        for _ in range(2):
            target = 1 - self.newest if self.newest >= 0 else 0
            counter = self.counter + 1
            with open(self.paths[target], "w") as f:
                f.write(_seal(counter, text))
            self.counter, self.newest = counter, target

    # Raise a monotonic value (floor, kl, t); saved only when it grows. True when it grew.
    def raise_to(self, key, value):
        if value is None or value <= self.data[key]:
            return False
        self.data[key] = value
        self.save()
        return True


class Store:
    def __init__(self, path="fota_state.json"):
        self.path = path
        self.data = _defaults()
        loaded = read_json(path)
        if isinstance(loaded, dict):
            self.data.update(loaded)
        self.records = Records(path)

    def save(self):
        write_atomic(self.path, json.dumps(self.data))

    # The anti-rollback floor from what is left: the anchors and the JSON file (the larger).
    def floor(self):
        f = self.data["seq_floor"]
        r = self.records.data["floor"]
        return f if isinstance(f, int) and f > r else r

    # The anchors first (durable, redundant), then the JSON file's copy (for reports).
    def raise_floor(self, seq):
        self.records.raise_to("floor", seq)
        self.data["seq_floor"] = self.floor()

    # Images (SHA-256 hex) that rolled back here: refused when offered again.
    def rolled_back(self, sha_hex):
        return sha_hex in self.records.data["rb"]

    def note_rolled_back(self, sha_hex):
        rb = self.records.data["rb"]
        if sha_hex not in rb:
            rb.append(sha_hex)
            del rb[:-_ROLLED_BACK_KEPT]
            self.records.save()

    # Keep the last MAX_ERRORS errors: [code, detail, time].
    def log_error(self, code, detail, now):
        errs = self.data["errors"]
        errs.append([code, detail, now])
        while len(errs) > MAX_ERRORS:
            errs.pop(0)

    def set_result(self, code, lwm2m, detail, version, now):
        self.data["result"] = {"code": code, "lwm2m": lwm2m, "detail": detail, "version": version, "time": now}
