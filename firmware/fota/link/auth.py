"""Authenticated reports: the device's own MAC on every state and event it sends (docs/SECURITY.md).

    signer = Signer(bytes.fromhex(cfg["key"]), device_id)   # the per-device key from `fota provision`
    link.signer = signer                                     # core.Link seals what it sends
    payload = signer.seal("state", text)                     # text + "\n<counter> <HMAC hex>"

The wire form is docs/PROTOCOL.md "Authenticated reports": the JSON, a newline, the counter in
decimal, a space, and 64 hex digits of HMAC-SHA256(key, "<device>/<kind> <counter>\n" + JSON).
HMAC is RFC 2104 over the native hashlib.sha256 (there is no hmac module on the Unix port).

The counter only grows, also across resets and power cuts: before a counter is used, a block of
_RESERVE counters above it is recorded, and after a reset counting starts at the recorded end, so no
value is ever used twice. It is recorded in NVS (`fota`/`ctr`, one atomic nvs_commit: a few 32-byte
entries), or where there is no esp32.NVS in `path` (written to a temporary file, then renamed over the
old one). As a LittleFS file it cost ~0.9 s of flash work at ESP32 speed every 32 reports, a turn the
application waited for (firmware/README.md "What blocks"). Counting starts at the greater of the two,
so a device whose counter was in the file keeps counting up. A lost or unreadable record starts again
at 0, which the server refuses as replays until the device is provisioned again (`fota provision`
gives it a new key and the server a fresh counter).
"""

import hashlib
import os
from binascii import hexlify

from ..compat import const

_BLOCK = const(64)  # RFC 2104 B: the SHA-256 block size
_IPAD = const(0x36)  # RFC 2104 ipad byte
_OPAD = const(0x5C)  # RFC 2104 opad byte
_RESERVE = const(32)  # counters recorded per write of the counter (flash wear: one write per 32 reports)
_NVS_NAMESPACE = "fota"  # the journal's namespace too (boot/state.py)
_NVS_COUNTER = "ctr"


def _nvs():
    """esp32.NVS of the counter, or None (CPython, a build without it, no nvs partition)."""
    try:
        import esp32

        return esp32.NVS(_NVS_NAMESPACE)
    except (ImportError, AttributeError, OSError):
        return None


def _pad(key, byte):
    out = bytearray(_BLOCK)
    for i in range(len(key)):
        out[i] = key[i]
    for i in range(_BLOCK):
        out[i] ^= byte
    return bytes(out)


# HMAC-SHA256 (RFC 2104) over several pieces; the pads are precomputed by the Signer.
def hmac_sha256(ipad, opad, parts):
    inner = hashlib.sha256(ipad)
    for p in parts:
        inner.update(p)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


class Signer:
    def __init__(self, key, device_id, path="fota_ctr"):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        self._ipad = _pad(key, _IPAD)
        self._opad = _pad(key, _OPAD)
        self._who = (device_id + "/").encode()
        self.path = path
        self._next = -1  # -1: not read from the file yet
        self._end = 0  # counters below this one are recorded as possibly used
        self._nv = None  # esp32.NVS, or None: the file (set at the first counter)

    # The end of the last reserved block: the greater of NVS's and the counter file's (one decimal number).
    def _read(self):
        end = 0
        for name in (self.path, self.path + ".tmp"):
            try:
                with open(name) as f:
                    end = int(f.read().strip())
                break
            except (OSError, ValueError):
                pass
        if self._nv:
            try:
                end = max(end, self._nv.get_i32(_NVS_COUNTER))
            except OSError:  # ESP_ERR_NVS_NOT_FOUND: never recorded there
                pass
        return end

    def _record(self, end):
        if self._nv:
            self._nv.set_i32(_NVS_COUNTER, end)
            self._nv.commit()
        else:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d\n" % end)
            os.rename(tmp, self.path)
        self._end = end

    def counter(self):
        """The next counter (reads the file once, reserves a block when the last one is used up)."""
        if self._next < 0:
            self._nv = _nvs()
            self._next = self._end = self._read()
        if self._next >= self._end:
            self._record(self._next + _RESERVE)  # raises OSError: the report is not sent, it stays queued
        n = self._next
        self._next += 1
        return n

    def seal(self, kind, text):
        """`text` (a JSON str) with its trailer: what goes on the wire for a report of `kind` ("state", "events")."""
        n = self.counter()
        body = text.encode() if isinstance(text, str) else text
        mac = hmac_sha256(self._ipad, self._opad, (self._who, kind.encode(), b" %d\n" % n, body))
        return b"%s\n%d %s" % (body, n, hexlify(mac))
