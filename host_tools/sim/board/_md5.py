"""MD5 (RFC 1321) for Unix-port builds whose hashlib has none.

hashlib.md5 exists only when MicroPython is built with a TLS library (mbedTLS,
as on the ESP32, or axTLS); a build from a checkout without submodules has
sha256 alone. The board checks its partition table's MD5 (a few hundred
bytes, once per boot) with this then. Same interface as hashlib's:

    from _md5 import md5
    md5(data).digest()
"""

import struct

_M = 0xFFFFFFFF
# RFC 1321 section 3.4: per-round shift amounts; T[i] = floor(2^32 * abs(sin(i + 1)))
_S = (7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21)


def _t():
    import math

    return [int(abs(math.sin(i + 1)) * 4294967296) & _M for i in range(64)]


class md5:
    def __init__(self, data=b""):
        self._data = bytearray(data)

    def update(self, data):
        self._data.extend(data)

    def digest(self):
        t = _t()
        msg = bytes(self._data) + b"\x80"
        msg += bytes((56 - len(msg)) % 64) + struct.pack("<Q", len(self._data) * 8)
        h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
        for off in range(0, len(msg), 64):
            x = struct.unpack_from("<16I", msg, off)
            a, b, c, d = h
            for i in range(64):
                r = i >> 4
                if r == 0:
                    f = (b & c) | (~b & d)
                    g = i
                elif r == 1:
                    f = (d & b) | (~d & c)
                    g = (5 * i + 1) & 15
                elif r == 2:
                    f = b ^ c ^ d
                    g = (3 * i + 5) & 15
                else:
                    f = c ^ (b | (~d & _M))
                    g = (7 * i) & 15
                f = (f + a + t[i] + x[g]) & _M
                s = _S[(r << 2) | (i & 3)]
                a, d, c = d, c, b
                b = (b + (((f << s) | (f >> (32 - s))) & _M)) & _M
            h = [(v + w) & _M for v, w in zip(h, (a, b, c, d))]
        return struct.pack("<4I", *h)
