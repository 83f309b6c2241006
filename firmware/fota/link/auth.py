"""Authenticated reports: the device's own MAC on every state and event it sends (docs/SECURITY.md).

    signer = Signer(bytes.fromhex(cfg["key"]), device_id)   # the per-device key from `fota provision`
    link.signer = signer                                     # core.Link seals what it sends
    payload = signer.seal("state", text)                     # text + "\n<counter> <HMAC hex>"

The wire form is docs/PROTOCOL.md "Authenticated reports": the JSON, a newline, the counter in
decimal, a space, and 64 hex digits of HMAC-SHA256(key, "<device>/<kind> <counter>\n" + JSON).
HMAC is RFC 2104 over the native hashlib.sha256 (there is no hmac module on the Unix port).

The counter only grows, also across resets and power cuts: before a counter is used, a block of
_RESERVE counters above it is recorded in `path` (written to a temporary file, then renamed over
the old one); after a reset counting starts at the recorded end, so no value is ever used twice.
A lost or unreadable file starts again at 0, which the server refuses as replays until the device
is provisioned again (`fota provision` gives it a new key and the server a fresh counter).
"""

import hashlib
import os
from binascii import hexlify

from ..compat import const

_BLOCK = const(64)  # RFC 2104 B: the SHA-256 block size
_IPAD = const(0x36)  # RFC 2104 ipad byte
_OPAD = const(0x5C)  # RFC 2104 opad byte
_RESERVE = const(32)  # counters recorded per write of the counter file (flash wear: one write per 32 reports)


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

    # The counter file: one decimal number, the end of the last reserved block.
    def _read(self):
        for name in (self.path, self.path + ".tmp"):
            try:
                with open(name) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                pass
        return 0

    def _record(self, end):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % end)
        os.rename(tmp, self.path)
        self._end = end

    def counter(self):
        """The next counter (reads the file once, reserves a block when the last one is used up)."""
        if self._next < 0:
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
