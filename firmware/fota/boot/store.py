"""The agent's persistent state: a small JSON file, replaced atomically.

It holds what must survive a reset or a power cut: the anti-rollback floor
(the sequence number of the last committed update), the committed version,
the pending-update record that spans the reboot into a new image, the last
result, and a bounded error log.

    st = Store("fota_state.json")
    st.data["seq_floor"]            # 0 on a fresh device
    st.log_error(code, "detail", now)
    st.save()                       # write .tmp, then rename over the old file
"""

import json
import os

from ..compat import const


MAX_ERRORS = const(8)
_EEXIST = const(17)


def _defaults():
    return {"seq_floor": 0, "version": None, "pending": None, "result": None, "errors": [], "download": None}


# Replace `path` with `text`: a reader sees the old file or the new one, never half.
def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.args[0] != _EEXIST:  # FAT refuses to rename over a file; LittleFS does not
            raise
        os.remove(path)
        os.rename(tmp, path)


def read_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Store:
    def __init__(self, path="fota_state.json"):
        self.path = path
        self.data = _defaults()
        loaded = read_json(path)
        if isinstance(loaded, dict):
            self.data.update(loaded)

    def save(self):
        write_atomic(self.path, json.dumps(self.data))

    # Keep the last MAX_ERRORS errors: [code, detail, time].
    def log_error(self, code, detail, now):
        errs = self.data["errors"]
        errs.append([code, detail, now])
        while len(errs) > MAX_ERRORS:
            errs.pop(0)

    def set_result(self, code, lwm2m, detail, version, now):
        self.data["result"] = {"code": code, "lwm2m": lwm2m, "detail": detail, "version": version, "time": now}
